# The feature-reuse analyses of the fine-tuning runs (README "Feature reuse"): weight drift and
# first-layer filters per (dataset, arch, fraction) group (cheap: no forward pass), and
# re-initialisation robustness and layer-wise k-NN per run (they run the network), or per group
# with `analysis.{reinit,layer_knn}.job: group`. The parts are gathered into
# results/analysis/{kind}.csv by `medtransfer collect similarity`, the collector that
# concatenates tidy CSV parts.


localrules:
    collect_weight_drift,
    collect_filters,
    collect_reinit,
    collect_layer_knn,


rule weight_drift:
    input:
        group_weights,
    output:
        paths.group_analysis("weight_drift", "{dataset}", "{arch}", "{fraction}"),
    log:
        paths.log("weight_drift", "{dataset}/{arch}/f{fraction}"),
    conda:
        ENV
    threads: resource("weight_drift", "threads")
    resources:
        mem_mb=per_attempt("weight_drift", "mem_mb"),
        runtime=per_attempt("weight_drift", "runtime"),
        gpu=0,
    params:
        spec=weight_drift_spec,
    shell:
        "medtransfer weight-drift --spec {params.spec:q} --threads {threads} > {log} 2>&1"


rule collect_weight_drift:
    input:
        reuse_parts("weight_drift"),
    output:
        paths.analysis_table("weight_drift"),
    log:
        paths.log("collect", "weight_drift"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=per_attempt("collect", "mem_mb"),
        runtime=per_attempt("collect", "runtime"),
        gpu=0,
    shell:
        "medtransfer collect similarity --out {output} {input} > {log} 2>&1"


rule filters:
    input:
        group_weights,
    output:
        paths.group_analysis("filters", "{dataset}", "{arch}", "{fraction}"),
    log:
        paths.log("filters", "{dataset}/{arch}/f{fraction}"),
    conda:
        ENV
    threads: resource("filters", "threads")
    resources:
        mem_mb=per_attempt("filters", "mem_mb"),
        runtime=per_attempt("filters", "runtime"),
        gpu=0,
    params:
        spec=filters_spec,
    shell:
        "medtransfer filters --spec {params.spec:q} --threads {threads} > {log} 2>&1"


rule collect_filters:
    input:
        reuse_parts("filters"),
    output:
        paths.analysis_table("filters"),
    log:
        paths.log("collect", "filters"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=per_attempt("collect", "mem_mb"),
        runtime=per_attempt("collect", "runtime"),
        gpu=0,
    shell:
        "medtransfer collect similarity --out {output} {input} > {log} 2>&1"


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
        spec=filter_kernels_spec,
    shell:
        "medtransfer filter-kernels --spec {params.spec:q} --threads {threads} > {log} 2>&1"


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
        spec=reinit_spec,
    shell:
        "medtransfer reinit --spec {params.spec:q} --threads {threads} > {log} 2>&1"


rule reinit_group:
    input:
        unpack(group_network_inputs),
    output:
        paths.group_analysis("reinit", "{dataset}", "{arch}", "{fraction}"),
    log:
        paths.log("reinit", "{dataset}/{arch}/f{fraction}"),
    conda:
        ENV
    threads: resource("reinit", "threads")
    resources:
        mem_mb=per_attempt("reinit", "mem_mb"),
        runtime=per_attempt("reinit", "runtime"),
        gpu=1,
    params:
        spec=reinit_group_spec,
    shell:
        "medtransfer reinit --spec {params.spec:q} --threads {threads} > {log} 2>&1"


rule collect_reinit:
    input:
        reuse_parts("reinit"),
    output:
        paths.analysis_table("reinit"),
    log:
        paths.log("collect", "reinit"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=per_attempt("collect", "mem_mb"),
        runtime=per_attempt("collect", "runtime"),
        gpu=0,
    shell:
        "medtransfer collect similarity --out {output} {input} > {log} 2>&1"


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
        spec=layer_knn_spec,
    shell:
        "medtransfer layer-knn --spec {params.spec:q} --threads {threads} > {log} 2>&1"


rule layer_knn_group:
    input:
        unpack(group_network_inputs),
    output:
        paths.group_analysis("layer_knn", "{dataset}", "{arch}", "{fraction}"),
    log:
        paths.log("layer_knn", "{dataset}/{arch}/f{fraction}"),
    conda:
        ENV
    threads: resource("layer_knn", "threads")
    resources:
        mem_mb=per_attempt("layer_knn", "mem_mb"),
        runtime=per_attempt("layer_knn", "runtime"),
        gpu=1,
    params:
        spec=layer_knn_group_spec,
    shell:
        "medtransfer layer-knn --spec {params.spec:q} --threads {threads} > {log} 2>&1"


rule collect_layer_knn:
    input:
        reuse_parts("layer_knn"),
    output:
        paths.analysis_table("layer_knn"),
    log:
        paths.log("collect", "layer_knn"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=per_attempt("collect", "mem_mb"),
        runtime=per_attempt("collect", "runtime"),
        gpu=0,
    shell:
        "medtransfer collect similarity --out {output} {input} > {log} 2>&1"
