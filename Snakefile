"""diffprune: the benchmark DAG (task x method x rate x seed -> tables, figures, README).

    snakemake --cores all                                   # config/config.yaml
    snakemake --cores all --configfile config/paper.yaml    # another experiment
    snakemake --cores all --resources gpu=4                 # at most 4 GPU jobs, one GPU each

The rules live in workflow/rules/*.smk; this file only wires them together.
"""
from snakemake.utils import min_version

min_version("9.0")


# A --configfile *replaces* the default config rather than being merged into it (Snakemake's
# default): merging would leak config.yaml's tasks/methods/overrides into e.g. paper.yaml.
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/analysis.smk"


rule all:
    default_target: True
    input:
        f"{RESULTS}/README.md",
        f"{RESULTS}/tables",
        f"{RESULTS}/figures",
