rule pretrain:
    input:
        pretrain_inputs,
    output:
        model=paths.pretrain_model("{source}", "{arch}"),
        meta=paths.pretrain_meta("{source}", "{arch}"),
    log:
        paths.log("pretrain", "{source}/{arch}"),
    conda:
        ENV
    threads: resource("pretrain", "threads")
    resources:
        mem_mb=per_attempt("pretrain", "mem_mb"),
        runtime=per_attempt("pretrain", "runtime"),
        gpu=1,
    params:
        spec=pretrain_spec,
    shell:
        "medtransfer pretrain --spec {params.spec:q} --threads {threads} --no-progress >> {log} 2>&1"
