rule activations:
    input:
        init=paths.run_file(RUN, "init.pt"),
        final=paths.run_file(RUN, "final.pt"),
        cache=paths.dataset_cache("{dataset}"),
    output:
        init=paths.activations(RUN, "init"),
        final=paths.activations(RUN, "final"),
    log:
        paths.log("activations", RUN.id),
    conda:
        ENV
    threads: resource("activations", "threads")
    resources:
        mem_mb=per_attempt("activations", "mem_mb"),
        runtime=per_attempt("activations", "runtime"),
        gpu=1,
    params:
        spec=job_spec(STUDY.activation_spec, run_of),
    shell:
        "medtransfer activations --spec {params.spec:q} --threads {threads} > {log:q} 2>&1"
