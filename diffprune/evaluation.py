"""Loading a task's model and data the way every run does, scoring a model on the task's dev
sets, and the ``evaluate`` verb: a stored run artifact (``diffprune.artifact``: any method's)
rebuilt on the config's base model.

``train``, ``prune`` (``diffprune.runner``), ``evaluate`` and ``evaluate-folder``
(``diffprune.pretrained``) all load and score through these functions, so that a stored task
evaluated later scores as the run that made it did.
"""
from __future__ import annotations

import os

from diffprune import settings
from diffprune.atomic import write_json
from diffprune.device import autocast_context, device_label, pick_device, resolve_precision, set_thread_count
from diffprune.job_timings import PhaseClock
from diffprune.progress import log
from diffprune.run_plan import EvaluatePlan
from diffprune.run_record import evaluation_result, json_safe
from diffprune.seeding import DATA_SUBSAMPLE_SEED, derive_seeds, seed_global_rngs


def load_task_and_model(plan_cfg: dict, task_name: str, training: dict, data_cfg: dict, init_seed: int,
                        clock: PhaseClock | None = None):
    """The task, the pretrained model for it (head initialised from ``init_seed``), its
    tokenizer and the data (subsampled the same way for every run seed)."""
    from diffprune.models import load_pretrained
    from diffprune.tasks import get_task
    from diffprune.tasks.cache import load_task_data

    clock = clock or PhaseClock()
    task = get_task(task_name)
    with clock.phase("load_model"):
        seed_global_rngs(init_seed)
        model, tokenizer, model_id = load_pretrained(settings.model_spec(plan_cfg), task, plan_cfg.get("head_pattern"))
    with clock.phase("load_data"):  # tokenised once per run set where the feature cache is on
        data = load_task_data(task, tokenizer, data_cfg, training["max_seq_length"],
                              max_train_examples=training["max_train_examples"],
                              max_eval_examples=training["max_eval_examples"], seed=DATA_SUBSAMPLE_SEED,
                              doc_stride=training["doc_stride"])
    return task, model, tokenizer, model_id, data


def evaluate_module(task, module, data, training: dict, device, precision: str) -> dict:
    """``task.evaluate`` under the run's autocast: ``{"metrics", "scores"}``, JSON-safe."""
    with autocast_context(device, precision):
        result = task.evaluate(module, data, training["eval_batch_size"], device)
    return json_safe(result)


def execute_evaluate(plan: EvaluatePlan) -> dict | None:
    """Load the shared base model, rebuild a stored artifact's task model on it, evaluate,
    write the JSON."""
    if os.path.lexists(plan.out_path):
        raise FileExistsError(f"--out {plan.out_path} exists: delete it or choose another --out")
    import torch

    from diffprune.artifact import load_task_model, read_artifact
    from diffprune.tasks import task_label_set

    set_thread_count(plan.training["num_threads"])
    device = pick_device()
    precision = resolve_precision(plan.training["precision"], device)
    task, model, _, model_id, data = load_task_and_model(plan.cfg, plan.task, plan.training, plan.data_cfg,
                                                         derive_seeds(0).model_init)
    # Read again (planning checked it): the files may have changed since. The method's load
    # checks the payload, the task and the base model before it changes the model.
    artifact = read_artifact(plan.artifact_path)
    module = load_task_model(artifact, model, task=plan.task, labels=task_label_set(task)).to(device)
    evaluation = evaluate_module(task, module, data, plan.training, device, precision)
    result = evaluation_result(plan, task=task, model_id=model_id, artifact=artifact, evaluation=evaluation,
                               data=data, device_label=device_label(device), precision=precision,
                               num_threads=torch.get_num_threads())
    write_json(plan.out_path, result)
    log(f"done: {plan.out_path} scores {result['scores']}")
    return result
