# Cross-run feature-reuse analyses from files the runs already wrote (no fine-tuning reruns):
# FID between source and target datasets, prediction similarity, representation vs gain.


localrules:
    domain_distance,
    fid_gain,
    representation_gain,


rule fid_stats:
    input:
        unpack(fid_stats_inputs),
    output:
        paths.fid_stats("{embedder}", "{dataset}"),
    log:
        paths.log("fid_stats", "{embedder}/{dataset}"),
    wildcard_constraints:
        embedder=r"[^/]+",
    conda:
        ENV
    threads: resource("fid_stats", "threads")
    resources:
        mem_mb=per_attempt("fid_stats", "mem_mb"),
        runtime=per_attempt("fid_stats", "runtime"),
        gpu=1,
    params:
        spec=job_spec(STUDY.fid_stats_spec, "embedder", "dataset"),
    shell:
        "medtransfer fid-stats --spec {params.spec:q} --threads {threads} > {log:q} 2>&1"


rule domain_distance:
    input:
        STUDY.fid_stats_jobs(),
    output:
        paths.analysis_table("domain_distance"),
    log:
        paths.log("domain", "domain_distance"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=per_attempt("domain", "mem_mb"),
        runtime=per_attempt("domain", "runtime"),
        gpu=0,
    params:
        spec=job_spec(STUDY.domain_distance_spec),
    shell:
        "medtransfer fid --spec {params.spec:q} > {log:q} 2>&1"


rule fid_gain:
    input:
        distance=paths.analysis_table("domain_distance"),
        metrics=paths.analysis_table("metrics"),
    output:
        paths.analysis_table("fid_gain"),
    log:
        paths.log("domain", "fid_gain"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=per_attempt("domain", "mem_mb"),
        runtime=per_attempt("domain", "runtime"),
        gpu=0,
    params:
        spec=job_spec(STUDY.fid_gain_spec),
    shell:
        "medtransfer fid-gain --spec {params.spec:q} > {log:q} 2>&1"


rule prediction_similarity:
    input:
        prediction_inputs,
    output:
        paths.group_analysis(
            "prediction_similarity", "{dataset}", "{arch}", "{fraction}"
        ),
    log:
        paths.log("prediction_similarity", "{dataset}/{arch}/{fraction}"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=per_attempt("domain", "mem_mb"),
        runtime=per_attempt("domain", "runtime"),
        gpu=0,
    params:
        spec=job_spec(STUDY.prediction_similarity_spec, *GROUP),
    shell:
        "medtransfer prediction-similarity --spec {params.spec:q} > {log:q} 2>&1"


rule representation_gain:
    input:
        similarity=paths.analysis_table("similarity_init_final"),
        metrics=paths.analysis_table("metrics"),
    output:
        correlations=paths.analysis_table("representation_gain"),
        runs=paths.analysis_table("representation_gain_runs"),
    log:
        paths.log("domain", "representation_gain"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=per_attempt("domain", "mem_mb"),
        runtime=per_attempt("domain", "runtime"),
        gpu=0,
    params:
        spec=job_spec(STUDY.representation_gain_spec),
    shell:
        "medtransfer representation-gain --spec {params.spec:q} > {log:q} 2>&1"
