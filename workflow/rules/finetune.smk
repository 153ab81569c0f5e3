rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        init=paths.run_file(RUN, "init.pt"),
        init_record=paths.run_file(RUN, "init.json"),
        final=paths.run_file(RUN, "final.pt"),
        history=paths.run_file(RUN, "history.csv"),
        predictions=paths.run_file(RUN, "predictions.h5"),
        metrics=paths.run_file(RUN, "metrics.json"),
    log:
        paths.log("finetune", RUN.id),
    conda:
        ENV
    threads: resource("finetune", "threads")
    resources:
        mem_mb=per_attempt("finetune", "mem_mb"),
        runtime=per_attempt("finetune", "runtime"),
        gpu=finetune_gpus,
    params:
        spec=job_spec(STUDY.run_spec, run_of),
        launcher=finetune_launcher,
    shell:
        "{params.launcher} finetune --spec {params.spec:q} --threads {threads} --no-progress >> {log:q} 2>&1"
