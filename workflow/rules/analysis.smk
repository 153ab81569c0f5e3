rule similarity_init_final:
    input:
        similarity_inputs,
    output:
        paths.group_analysis(
            "similarity_init_final", "{dataset}", "{arch}", "{fraction}"
        ),
    log:
        paths.log("similarity_init_final", "{dataset}/{arch}/f{fraction}"),
    conda:
        ENV
    threads: resource("similarity", "threads")
    resources:
        mem_mb=per_attempt("similarity", "mem_mb"),
        runtime=per_attempt("similarity", "runtime"),
        gpu=0,
    params:
        spec=similarity_spec,
    shell:
        "medtransfer similarity --spec {params.spec:q} --threads {threads} > {log} 2>&1"


rule collect_metrics:
    input:
        metrics=run_outputs("metrics.json") + probe_outputs("metrics.json"),
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
        "medtransfer collect metrics --out {output} {input.metrics} > {log} 2>&1"


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
        "medtransfer collect history --out {output} {input.metrics} > {log} 2>&1"


rule collect_similarity_init_final:
    input:
        similarity_outputs(),
    output:
        paths.analysis_table("similarity_init_final"),
    log:
        paths.log("collect", "similarity_init_final"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=per_attempt("collect", "mem_mb"),
        runtime=per_attempt("collect", "runtime"),
        gpu=0,
    shell:
        "medtransfer collect similarity --out {output} {input} > {log} 2>&1"


rule similarity_pairs:
    input:
        pairs_inputs,
    output:
        paths.group_analysis("similarity_pairs", "{dataset}", "{arch}", "{fraction}"),
    log:
        paths.log("similarity_pairs", "{dataset}/{arch}/f{fraction}"),
    conda:
        ENV
    threads: resource("similarity", "threads")
    resources:
        mem_mb=per_attempt("similarity", "mem_mb"),
        runtime=per_attempt("similarity", "runtime"),
        gpu=0,
    params:
        spec=pairs_spec,
    shell:
        "medtransfer similarity-pairs --spec {params.spec:q} --threads {threads} > {log} 2>&1"


rule collect_similarity_pairs:
    input:
        pairs_outputs(),
    output:
        paths.analysis_table("similarity_pairs"),
    log:
        paths.log("collect", "similarity_pairs"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=per_attempt("collect", "mem_mb"),
        runtime=per_attempt("collect", "runtime"),
        gpu=0,
    shell:
        "medtransfer collect similarity --out {output} {input} > {log} 2>&1"


rule collect_provenance:
    input:
        metrics=run_outputs("metrics.json") + probe_outputs("metrics.json"),
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
        "medtransfer collect provenance --out {output.csv} --html {output.html} "
        "{input.metrics} {input.pretrain} > {log} 2>&1"
