# Analysis, at the end of the DAG: the config's runs -> summary.csv (+ layers.csv) -> the
# claims table, tables and figures -> results/<name>/README.md (opening with the claims
# table). collect reads exactly the runs the config expands to (--only): finished runs of a
# method, task, rate or seed dropped from the config are named in its log and left out.
# Cheap, so they run on the submitting machine.


rule collect:
    input:
        RUN_DIRS,
    output:
        summary=report(
            f"{RESULTS}/summary.csv",
            caption="../report/summary.rst",
            category="Summary",
        ),
        layers=f"{RESULTS}/layers.csv",
    params:
        python=untracked(PYTHON),
        # the runs/ folder beside summary.csv (derived from the output, as --lint asks)
        runs=lambda wildcards, output: os.path.join(os.path.dirname(output.summary), "runs"),
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/analysis/collect.log",
    localrule: True
    shell:
        "{params.python:q} -m diffprune.analysis collect --runs {params.runs:q} --out {output.summary:q} "
        "--layers-out {output.layers:q} --only {input:q} > {log:q} 2>&1"


# Table 5's serving part: N tasks switched on one base, measured on the run set's own diff
# files (diffprune/serve.py); which runs it takes: serving_choice in common.smk.
if SERVING is not None:

    rule serving:
        input:
            SERVING_RUNS,
        output:
            SERVING_FILE,
        params:
            python=untracked(PYTHON),
            config=untracked(CONFIG_FILE),
            runs=lambda wildcards, output: os.path.join(os.path.dirname(output[0]), "runs"),
            choice=f"--method-key {SERVING[0]} --rate {SERVING[1]} --seed {SERVING[2]}",
        conda:
            CONDA_ENV
        log:
            f"{LOGS}/analysis/serving.log",
        threads: 1
        shell:
            "{params.python:q} -m diffprune.serve --config {params.config:q} --runs {params.runs:q} "
            "{params.choice} --out {output:q} > {log:q} 2>&1"


# Tables 1-5 come and go with the run set (no SQuAD runs: no Table 4), hence a directory; the
# claims table is written on every run set (a claim lacking runs says "not testable here"), so
# it is also declared by name. Snakemake allows files inside a directory output of the same job.
rule tables:
    input:
        summary=f"{RESULTS}/summary.csv",
        layers=f"{RESULTS}/layers.csv",
        serving=[SERVING_FILE] if SERVING is not None else [],
    output:
        tables=report(
            directory(f"{RESULTS}/tables"),
            patterns=["{table}.csv"],
            caption="../report/tables.rst",
            category="Tables",
        ),
        claims_csv=f"{RESULTS}/tables/claims.csv",
        claims_md=f"{RESULTS}/tables/claims.md",
    params:
        python=untracked(PYTHON),
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/analysis/tables.log",
    localrule: True
    shell:
        "{params.python:q} -m diffprune.analysis tables --summary {input.summary:q} --layers {input.layers:q} "
        "--out-dir {output.tables:q} > {log:q} 2>&1"


rule figures:
    input:
        summary=f"{RESULTS}/summary.csv",
        layers=f"{RESULTS}/layers.csv",
    output:
        report(
            directory(f"{RESULTS}/figures"),
            patterns=["{figure}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    params:
        python=untracked(PYTHON),
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/analysis/figures.log",
    localrule: True
    shell:
        "{params.python:q} -m diffprune.analysis figures --summary {input.summary:q} --layers {input.layers:q} "
        "--out-dir {output:q} > {log:q} 2>&1"


rule readme:
    input:
        summary=f"{RESULTS}/summary.csv",
        tables=f"{RESULTS}/tables",
        claims=f"{RESULTS}/tables/claims.md",  # the README's first section
        figures=f"{RESULTS}/figures",
    output:
        f"{RESULTS}/README.md",
    params:
        python=untracked(PYTHON),
        results=lambda wildcards, output: os.path.dirname(output[0]),
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/analysis/readme.log",
    localrule: True
    shell:
        "{params.python:q} -m diffprune.analysis readme --dir {params.results:q} > {log:q} 2>&1"
