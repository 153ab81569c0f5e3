# Frozen-feature protocols (linear, k-NN): features once per (dataset, arch, init[, seed]),
# then one cheap classifier job per grid cell. Fine-tuning runs are finetune.smk's.


rule features:
    input:
        unpack(features_inputs),
    output:
        paths.features("{dataset}", "{arch}", "{init}", "{key}"),
    log:
        paths.log("features", "{dataset}/{arch}/{init}/{key}"),
    conda:
        ENV
    threads: resource("features", "threads")
    resources:
        mem_mb=per_attempt("features", "mem_mb"),
        runtime=per_attempt("features", "runtime"),
        gpu=1,
    params:
        spec=job_spec(STUDY.features_spec, "dataset", "arch", "init", "key"),
    shell:
        "medtransfer features --spec {params.spec:q} --threads {threads} > {log:q} 2>&1"


rule probe:
    input:
        features=probe_features,
    output:
        metrics=paths.protocol_run_file("{protocol}", RUN, "metrics.json"),
        predictions=paths.protocol_run_file("{protocol}", RUN, "predictions.h5"),
    log:
        paths.log("probe", f"{{protocol}}/{RUN.id}"),
    conda:
        ENV
    threads: resource("probe", "threads")
    resources:
        mem_mb=per_attempt("probe", "mem_mb"),
        runtime=per_attempt("probe", "runtime"),
        gpu=0,
    params:
        spec=job_spec(STUDY.probe_spec, "protocol", run_of),
    shell:
        "medtransfer probe --spec {params.spec:q} --threads {threads} > {log:q} 2>&1"


# LP-FT (study.protocols: [..., lpft]): the head on the frozen backbone (`lpft:` over `train:`),
# then every layer (`train:`), in one job of the fine-tuning command, with a fine-tuning run's files.
rule lpft:
    input:
        unpack(finetune_inputs),
    output:
        init=paths.protocol_run_file("lpft", RUN, "init.pt"),
        init_record=paths.protocol_run_file("lpft", RUN, "init.json"),
        final=paths.protocol_run_file("lpft", RUN, "final.pt"),
        history=paths.protocol_run_file("lpft", RUN, "history.csv"),
        predictions=paths.protocol_run_file("lpft", RUN, "predictions.h5"),
        metrics=paths.protocol_run_file("lpft", RUN, "metrics.json"),
    log:
        paths.log("lpft", RUN.id),
    conda:
        ENV
    threads: resource("finetune", "threads")
    resources:
        mem_mb=per_attempt("finetune", "mem_mb"),
        runtime=per_attempt("finetune", "runtime"),
        gpu=finetune_gpus,
    params:
        spec=job_spec(STUDY.lpft_spec, run_of),
        launcher=finetune_launcher,
    shell:
        "{params.launcher} finetune --spec {params.spec:q} --threads {threads} --no-progress >> {log:q} 2>&1"
