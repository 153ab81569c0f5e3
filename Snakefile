# medtransfer: transfer learning for medical image classification, from raw data to figures.
# The study is --configfile workflow/studies/<study>.yaml (the demo, config.yaml, without one); see README.md.
from snakemake.utils import min_version

min_version("8.0")


# A study is exactly the files named with --configfile (merged in order, over the package's
# defaults in medtransfer.study.defaults); the demo (config.yaml) is the study only when no file
# is named, so no key of the demo leaks into another study.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/protocols.smk"
include: "workflow/rules/representations.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/reuse.smk"
include: "workflow/rules/domain.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"


# A failed job's reason is in its own log: print the end of each, so nobody has to go looking.
onerror:
    report_failed_jobs(log)


rule all:
    default_target: True
    input:
        final_targets(),
