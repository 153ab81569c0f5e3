# The study report's own pieces: its front page and its tables (the figures are the figure rule's).
# Made by the run, so `snakemake --report results/report.html` afterwards finds every one.


localrules:
    report_front,
    report_table,


rule report_front:
    input:
        unpack(report_front_inputs),
    output:
        paths.report_front(),
    log:
        paths.log("report", "front"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=per_attempt("figure", "mem_mb"),
        runtime=per_attempt("figure", "runtime"),
        gpu=0,
    params:
        spec=job_spec(STUDY.front_spec, configfiles),
    shell:
        "medtransfer report-front --spec {params.spec:q} > {log:q} 2>&1"


rule report_table:
    input:
        report_table_input,
    output:
        html=report(
            paths.report_table("{table}", "html"),
            caption="../report/table.rst",
            category=report_table_category,
            subcategory=report_table_subcategory,
            labels=report_table_labels,
        ),
        caption=paths.report_table("{table}", "rst"),
    log:
        paths.log("report", "{table}"),
    wildcard_constraints:
        table="|".join(report_layout.REPORT_TABLES),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=per_attempt("figure", "mem_mb"),
        runtime=per_attempt("figure", "runtime"),
        gpu=0,
    shell:
        "medtransfer report-table {wildcards.table:q} --input {input:q} --out {output.html:q} "
        "--caption {output.caption:q} > {log:q} 2>&1"
