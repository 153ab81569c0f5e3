rule similarity_init_final:
    input:
        similarity_inputs,
    output:
        paths.group_analysis(
            "similarity_init_final", "{dataset}", "{arch}", "{fraction}"
        ),
    log:
        paths.log("similarity_init_final", "{dataset}/{arch}/{fraction}"),
    conda:
        ENV
    threads: resource("similarity", "threads")
    resources:
        mem_mb=per_attempt("similarity", "mem_mb"),
        runtime=per_attempt("similarity", "runtime"),
        gpu=0,
    params:
        spec=job_spec(STUDY.similarity_spec, *GROUP),
    shell:
        "medtransfer similarity --spec {params.spec:q} --threads {threads} > {log:q} 2>&1"


rule collect_metrics:
    input:
        metrics=every_protocol_outputs("metrics.json"),
    output:
        paths.analysis_table("metrics"),
    log:
        paths.log("collect", "metrics"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=per_attempt("collect", "mem_mb"),
        runtime=per_attempt("collect", "runtime"),
        gpu=0,
    shell:
        "medtransfer collect metrics --out {output:q} {input.metrics:q} > {log:q} 2>&1"


rule collect_history:
    input:
        metrics=run_outputs("metrics.json"),
        history=run_outputs("history.csv"),
    output:
        paths.analysis_table("history"),
    log:
        paths.log("collect", "history"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=per_attempt("collect", "mem_mb"),
        runtime=per_attempt("collect", "runtime"),
        gpu=0,
    shell:
        "medtransfer collect history --out {output:q} {input.metrics:q} > {log:q} 2>&1"


rule similarity_pairs:
    input:
        pairs_inputs,
    output:
        paths.group_analysis("similarity_pairs", "{dataset}", "{arch}", "{fraction}"),
    log:
        paths.log("similarity_pairs", "{dataset}/{arch}/{fraction}"),
    conda:
        ENV
    threads: resource("similarity", "threads")
    resources:
        mem_mb=per_attempt("similarity", "mem_mb"),
        runtime=per_attempt("similarity", "runtime"),
        gpu=0,
    params:
        spec=job_spec(STUDY.pairs_spec, *GROUP),
    shell:
        "medtransfer similarity-pairs --spec {params.spec:q} --threads {threads} > {log:q} 2>&1"


# The tables gathered from one CSV per run or group (common.smk's PART_TABLES: similarity, and
# the feature-reuse and prediction-similarity analyses), each by concatenating its parts.
rule collect_parts:
    input:
        table_parts,
    output:
        paths.analysis_table("{kind}"),
    log:
        paths.log("collect", "{kind}"),
    wildcard_constraints:
        kind="|".join(PART_TABLES),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=per_attempt("collect", "mem_mb"),
        runtime=per_attempt("collect", "runtime"),
        gpu=0,
    shell:
        "medtransfer collect parts --out {output:q} {input:q} > {log:q} 2>&1"


rule collect_provenance:
    input:
        metrics=every_protocol_outputs("metrics.json"),
        pretrain=pretrain_metas(),
    output:
        csv=paths.table("provenance", "csv"),
        html=paths.table("provenance", "html"),
    log:
        paths.log("collect", "provenance"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=per_attempt("collect", "mem_mb"),
        runtime=per_attempt("collect", "runtime"),
        gpu=0,
    shell:
        "medtransfer collect provenance --out {output.csv:q} --html {output.html:q} "
        "{input.metrics:q} {input.pretrain:q} > {log:q} 2>&1"
