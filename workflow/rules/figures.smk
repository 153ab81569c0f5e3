# Every figure is a target of its own: `snakemake results/figures/<name>.pdf`.


localrules:
    figure,
    summary_table,
    comparison_table,
    pretrain_table,
    collect_metrics,
    collect_history,
    collect_parts,
    collect_provenance,


rule figure:
    input:
        figure_input,
    output:
        pdf=report(
            paths.figure("{figure}", "pdf"),
            caption="../report/figure.rst",
            category=figure_category,
            subcategory=figure_subcategory,
            labels=figure_labels("pdf"),
        ),
        png=report(
            paths.figure("{figure}", "png"),
            caption="../report/figure.rst",
            category=figure_category,
            subcategory=figure_subcategory,
            labels=figure_labels("png"),
        ),
        caption=paths.figure("{figure}", "rst"),
    log:
        paths.log("figure", "{figure}"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=per_attempt("figure", "mem_mb"),
        runtime=per_attempt("figure", "runtime"),
        gpu=0,
    params:
        measure=STUDY.figure_measure(),
    shell:
        "medtransfer figure {wildcards.figure:q} --input {input:q} --out {output.pdf:q} "
        "--measure {params.measure:q} --caption {output.caption:q} > {log:q} 2>&1"


rule summary_table:
    input:
        paths.analysis_table("metrics"),
    output:
        csv=paths.table("summary", "csv"),
        md=paths.table("summary", "md"),
    log:
        paths.log("table", "summary"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=per_attempt("figure", "mem_mb"),
        runtime=per_attempt("figure", "runtime"),
        gpu=0,
    shell:
        "medtransfer table --input {input:q} --out-csv {output.csv:q} --out-md {output.md:q} > {log:q} 2>&1"


rule comparison_table:
    input:
        paths.analysis_table("metrics"),
    output:
        csv=paths.table("comparison", "csv"),
        md=paths.table("comparison", "md"),
    log:
        paths.log("table", "comparison"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=per_attempt("figure", "mem_mb"),
        runtime=per_attempt("figure", "runtime"),
        gpu=0,
    params:
        reference=STUDY.analysis.get("reference", ""),
    shell:
        "medtransfer table --comparison {params.reference:q} --input {input:q} "
        "--out-csv {output.csv:q} --out-md {output.md:q} > {log:q} 2>&1"
