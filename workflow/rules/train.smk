# Training. Work is shared, never repeated:
#   train  one job per (task, method key, seed) for every key that trains: the dense methods
#          and the L0 phase of adaptive diff pruning (which does not depend on the rate);
#   prune  one job per rate on top of a train run: projection onto the L0 ball + fixed-mask
#          finetuning. Non-adaptive diff pruning has no train job of its own; its prune jobs
#          start from the full-finetuning run of the same task and seed (Method.reuses).
#
# A run's settings (a rule parameter) include the content hash of its task's data, so a data
# copy whose files differ re-runs exactly the runs of that task (see get_run_data_input).
#
# Each job's output is its run directory, which the runner writes as DIR.tmp and renames
# when complete: a directory that exists is finished, so an interrupted workflow re-runs
# only the jobs whose directories are missing (and resumes them from DIR.tmp/checkpoint.safetensors).
# Every run directory holds the run's task as one payload + artifact.json, whatever the method
# (`python -m diffprune evaluate --artifact DIR` scores it), so no rule lists per-method files.
#
# resources: gpu=1 caps concurrency under `--resources gpu=N` and maps to --gpus=1 on SLURM;
# it constrains nothing when no gpu resource is given, so the same DAG runs on a CPU.


rule train:
    input:
        data=get_run_data_input,
        needed=get_needed_run,
    output:
        run=directory(TRAIN_RUN),
    params:
        needed=get_needed_run_flag,
        python=untracked(PYTHON),
        config=untracked(CONFIG_FILE),
        data_env=get_data_env,
        settings=lambda wildcards: run_settings(wildcards.task, wildcards.key, "train"),
    wildcard_constraints:
        key=_alternatives(TRAIN_KEYS),
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/{{task}}/{{key}}/seed{{seed}}.log",
    threads: 1
    priority: run_priority
    resources:
        gpu=1,
    shell:
        shell_command(
            "train --config {params.config:q} --task {wildcards.task} --method-key {wildcards.key}",
            "--seed {wildcards.seed} {params.needed} --out {output.run:q} > {log:q} 2>&1",
        )


rule prune:
    input:
        source=get_source_run,
        data=get_run_data_input,
    output:
        run=directory(PRUNE_RUN),
    params:
        python=untracked(PYTHON),
        config=untracked(CONFIG_FILE),
        data_env=get_data_env,
        settings=lambda wildcards: run_settings(wildcards.task, wildcards.key, "prune"),
    wildcard_constraints:
        key=_alternatives(PROJECTED_KEYS),
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/{{task}}/{{key}}/rate{{rate}}/seed{{seed}}.log",
    threads: 1
    priority: run_priority
    resources:
        gpu=1,
    shell:
        shell_command(
            "prune --config {params.config:q} --task {wildcards.task} --method-key {wildcards.key}",
            "--seed {wildcards.seed} --rate {wildcards.rate} --from {input.source:q}",
            "--out {output.run:q} > {log:q} 2>&1",
        )
