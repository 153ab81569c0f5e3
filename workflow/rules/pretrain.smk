rule pretrain:
    input:
        pretrain_inputs,
    output:
        model=paths.pretrain_model("{source}", "{arch}"),
        meta=paths.pretrain_meta("{source}", "{arch}"),
    params:
        spec=pretrain_spec,
    log:
        paths.log("pretrain", "{source}/{arch}"),
    threads: resource("pretrain", "threads")
    resources:
        mem_mb=per_attempt("pretrain", "mem_mb"),
        runtime=per_attempt("pretrain", "runtime"),
        gpu=1,
    conda:
        ENV
    shell:
        "medtransfer pretrain --spec {params.spec:q} --threads {threads} --no-progress > {log} 2>&1"
