# Data: one small job per task that either links a local copy into resources/ or warms the
# Hugging Face cache, and always writes resources/.../manifest.json saying which it was.
# Both are cheap and need the network at most here, so they run on the submitting machine
# (compute nodes often have no internet).


rule glue_data:
    output:
        "resources/glue/{folder}/manifest.json",
    params:
        python=untracked(PYTHON),
        script=untracked(PREPARE_DATA),
        task=lambda wildcards: next(t for t, f in GLUE_FOLDERS.items() if f == wildcards.folder),
        source=lambda wildcards: DATA["glue_dir"] or "hub",
    wildcard_constraints:
        folder=_alternatives(GLUE_FOLDERS.values()),
    conda:
        CONDA_ENV
    log:
        "resources/logs/glue_{folder}.log",
    localrule: True
    # Seconds of work that unlock every run of the task: before any run job, else a task's
    # longest runs wait behind the runs of tasks whose data happened to be ready first.
    priority: DATA_PRIORITY
    shell:
        "{params.python:q} {params.script:q} --task {params.task} "
        "--source {params.source:q} --out {output} > {log} 2>&1"


rule squad_data:
    output:
        "resources/squad/manifest.json",
    params:
        python=untracked(PYTHON),
        script=untracked(PREPARE_DATA),
        source=lambda wildcards: DATA["squad_dir"] or "hub",
    conda:
        CONDA_ENV
    log:
        "resources/logs/squad.log",
    localrule: True
    # Seconds of work that unlock every run of the task: before any run job, else a task's
    # longest runs wait behind the runs of tasks whose data happened to be ready first.
    priority: DATA_PRIORITY
    shell:
        "{params.python:q} {params.script:q} --task squad "
        "--source {params.source:q} --out {output} > {log} 2>&1"
