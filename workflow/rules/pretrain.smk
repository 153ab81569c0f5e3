rule pretrain:
    input:
        unpack(pretrain_inputs),
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
        gpu=pretrain_gpus,
    params:
        spec=job_spec(STUDY.pretrain_spec, "source", "arch"),
        launcher=pretrain_launcher,
    shell:
        "{params.launcher} pretrain --spec {params.spec:q} --threads {threads} --no-progress >> {log:q} 2>&1"


rule pretrain_table:
    input:
        pretrain_metas(),
    output:
        csv=paths.table("pretrain", "csv"),
        md=paths.table("pretrain", "md"),
    log:
        paths.log("collect", "pretrain"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=per_attempt("collect", "mem_mb"),
        runtime=per_attempt("collect", "runtime"),
        gpu=0,
    shell:
        "medtransfer collect pretrain --out {output.csv:q} --markdown {output.md:q} {input:q} > {log:q} 2>&1"
