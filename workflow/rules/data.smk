rule preprocess:
    output:
        paths.dataset_cache("{dataset}"),
    log:
        paths.log("preprocess", "{dataset}"),
    conda:
        ENV
    threads: resource("preprocess", "threads")
    resources:
        mem_mb=per_attempt("preprocess", "mem_mb"),
        runtime=per_attempt("preprocess", "runtime"),
        gpu=0,
    params:
        spec=job_spec(STUDY.preprocess_spec, "dataset"),
    shell:
        "medtransfer preprocess --spec {params.spec:q} --threads {threads} --no-progress > {log:q} 2>&1"
