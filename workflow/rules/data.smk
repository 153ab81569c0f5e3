rule preprocess:
    output:
        paths.dataset_cache("{dataset}"),
    params:
        spec=preprocess_spec,
    log:
        paths.log("preprocess", "{dataset}"),
    threads: resource("preprocess", "threads")
    resources:
        mem_mb=per_attempt("preprocess", "mem_mb"),
        runtime=per_attempt("preprocess", "runtime"),
        gpu=0,
    conda:
        ENV
    shell:
        "medtransfer preprocess --spec {params.spec:q} --threads {threads} --no-progress > {log} 2>&1"
