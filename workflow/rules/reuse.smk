# The feature-reuse analyses of the fine-tuning runs (docs/analyses.md, "Feature reuse"): weight
# drift and first-layer filters per (dataset, arch, fraction) group (cheap: no forward pass), and
# re-initialisation robustness and layer-wise k-NN per run (they run the network), or per group
# with `analysis.{reinit,layer_knn}.job: group`. The parts are gathered into
# results/analysis/{kind}.csv by the collect_parts rule (analysis.smk).


rule weight_drift:
    input:
        group_weights,
    output:
        paths.group_analysis("weight_drift", "{dataset}", "{arch}", "{fraction}"),
    log:
        paths.log("weight_drift", "{dataset}/{arch}/{fraction}"),
    conda:
        ENV
    threads: resource("weight_drift", "threads")
    resources:
        mem_mb=per_attempt("weight_drift", "mem_mb"),
        runtime=per_attempt("weight_drift", "runtime"),
        gpu=0,
    params:
        spec=job_spec(STUDY.weight_drift_spec, *GROUP),
    shell:
        "medtransfer weight-drift --spec {params.spec:q} --threads {threads} > {log:q} 2>&1"


rule filters:
    input:
        group_weights,
    output:
        paths.group_analysis("filters", "{dataset}", "{arch}", "{fraction}"),
    log:
        paths.log("filters", "{dataset}/{arch}/{fraction}"),
    conda:
        ENV
    threads: resource("filters", "threads")
    resources:
        mem_mb=per_attempt("filters", "mem_mb"),
        runtime=per_attempt("filters", "runtime"),
        gpu=0,
    params:
        spec=job_spec(STUDY.filters_spec, *GROUP),
    shell:
        "medtransfer filters --spec {params.spec:q} --threads {threads} > {log:q} 2>&1"


rule filter_kernels:
    input:
        filter_cell_weights,
    output:
        paths.analysis_table("filter_kernels"),
    log:
        paths.log("filters", "kernels"),
    conda:
        ENV
    threads: resource("filters", "threads")
    resources:
        mem_mb=per_attempt("filters", "mem_mb"),
        runtime=per_attempt("filters", "runtime"),
        gpu=0,
    params:
        spec=job_spec(STUDY.filter_kernels_spec),
    shell:
        "medtransfer filter-kernels --spec {params.spec:q} --threads {threads} > {log:q} 2>&1"


rule reinit:
    input:
        init=paths.run_file(RUN, "init.pt"),
        final=paths.run_file(RUN, "final.pt"),
        metrics=paths.run_file(RUN, "metrics.json"),
        cache=paths.dataset_cache("{dataset}"),
    output:
        paths.run_analysis("reinit", RUN),
    log:
        paths.log("reinit", RUN.id),
    conda:
        ENV
    threads: resource("reinit", "threads")
    resources:
        mem_mb=per_attempt("reinit", "mem_mb"),
        runtime=per_attempt("reinit", "runtime"),
        gpu=1,
    params:
        spec=job_spec(STUDY.reinit_spec, run_of),
    shell:
        "medtransfer reinit --spec {params.spec:q} --threads {threads} > {log:q} 2>&1"


rule reinit_group:
    input:
        unpack(group_network_inputs),
    output:
        paths.group_analysis("reinit", "{dataset}", "{arch}", "{fraction}"),
    log:
        paths.log("reinit", "{dataset}/{arch}/{fraction}"),
    conda:
        ENV
    threads: resource("reinit", "threads")
    resources:
        mem_mb=per_attempt("reinit", "mem_mb"),
        runtime=per_attempt("reinit", "runtime"),
        gpu=1,
    params:
        spec=job_spec(partial(STUDY.reuse_group_spec, "reinit"), *GROUP),
    shell:
        "medtransfer reinit --spec {params.spec:q} --threads {threads} > {log:q} 2>&1"


rule layer_knn:
    input:
        init=paths.run_file(RUN, "init.pt"),
        final=paths.run_file(RUN, "final.pt"),
        metrics=paths.run_file(RUN, "metrics.json"),
        cache=paths.dataset_cache("{dataset}"),
    output:
        paths.run_analysis("layer_knn", RUN),
    log:
        paths.log("layer_knn", RUN.id),
    conda:
        ENV
    threads: resource("layer_knn", "threads")
    resources:
        mem_mb=per_attempt("layer_knn", "mem_mb"),
        runtime=per_attempt("layer_knn", "runtime"),
        gpu=1,
    params:
        spec=job_spec(STUDY.layer_knn_spec, run_of),
    shell:
        "medtransfer layer-knn --spec {params.spec:q} --threads {threads} > {log:q} 2>&1"


rule layer_knn_group:
    input:
        unpack(group_network_inputs),
    output:
        paths.group_analysis("layer_knn", "{dataset}", "{arch}", "{fraction}"),
    log:
        paths.log("layer_knn", "{dataset}/{arch}/{fraction}"),
    conda:
        ENV
    threads: resource("layer_knn", "threads")
    resources:
        mem_mb=per_attempt("layer_knn", "mem_mb"),
        runtime=per_attempt("layer_knn", "runtime"),
        gpu=1,
    params:
        spec=job_spec(partial(STUDY.reuse_group_spec, "layer_knn"), *GROUP),
    shell:
        "medtransfer layer-knn --spec {params.spec:q} --threads {threads} > {log:q} 2>&1"
