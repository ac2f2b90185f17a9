"""Carrying out a planned train or prune run: the training loop and ``execute``.

Each run is planned first (``diffprune.run_plan``), so that a mistake is reported before any
model loads; the ``evaluate`` verb is ``diffprune.evaluation.execute_evaluate``.

``execute`` writes into ``DIR.tmp`` and renames it to ``DIR`` when everything is written; a
``DIR/metrics.json`` means finished (the verb skips). ``DIR.tmp`` is held with an exclusive
``flock`` for the whole job and marked with the run it belongs to (``atomic.claim_dir``): a
second process asked for the same run waits, a link or a folder this run did not create is
refused, and nothing is cleared or published through a link. ``train_loop`` writes a resume
checkpoint (``diffprune.checkpoint``) as it goes; rerunning a killed run resumes from it, and
on the CPU finishes with the same numbers as an uninterrupted run.

A run directory holds ``metrics.json`` (``diffprune.run_record``), the run's artifact
(``artifact.json`` and its one payload, ``Method.save``: ``diffprune.artifact``), ``stats.json``
when the method has ``stats``, and for a train run whose key feeds prune runs
``dense_diff.safetensors`` (``diffprune.handover``; the L0 phase's payload is this file).
Training and evaluation use the device and autocast of ``diffprune.device``; the expected-L0
penalty is always fp32.

Testing hook: with ``DIFFPRUNE_TEST_CRASH_AFTER_STEPS=N`` the training loop raises
``SimulatedCrash`` right after optimizer step ``N`` (after the checkpoint of that step, if
one is due), so that the resume path can be tested without killing processes at a lucky moment.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from diffprune import rungraph
from diffprune.atomic import OWNER_FILE, claim_dir, clear_dir, disk_full_error, publish_dir, write_json
from diffprune.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_NAME, LEGACY_CHECKPOINT_NAME, as_loaded,
                                  restore_training, rng_states, save_checkpoint, trainable_state)
from diffprune.device import device_label, peak_memory_bytes, pick_device, resolve_precision, set_thread_count
from diffprune.evaluation import evaluate_module, load_task_and_model
from diffprune.handover import DENSE_DIFF_NAME, float_buffers, head_state, read_dense_diff_into, write_dense_diff
from diffprune.job_timings import PhaseClock
from diffprune.progress import log, progress_bar
from diffprune.run_plan import RunPlan
from diffprune.run_record import LoadedBase, json_safe, run_metrics
from diffprune.seeding import seed_global_rngs
from diffprune.training_schedule import epoch_batches, linear_schedule, step_counts

CRASH_HOOK_ENV = "DIFFPRUNE_TEST_CRASH_AFTER_STEPS"
PROGRESS_EVERY = 10  # steps between readings of the running loss for the progress bar


class SimulatedCrash(RuntimeError):
    """Raised by the testing hook ``DIFFPRUNE_TEST_CRASH_AFTER_STEPS``."""


# ----------------------------------------------------------------------------- training

@dataclass
class TrainOutcome:
    steps: int
    epochs: int
    train_seconds: float
    extra: dict


def train_loop(plan: RunPlan, module, method, data, device, precision: str, extra: dict) -> TrainOutcome:
    """Optimise ``module`` on ``data.train``; resumes from ``plan.tmp_dir/CHECKPOINT_NAME``.

    ``extra`` is stored in every checkpoint and returned (e.g. the prune phase's
    before-finetune evaluation, so a resumed run does not need to recompute it).
    """
    import torch

    from diffprune.training_step import training_step

    training = plan.training
    checkpoint_path = plan.tmp_dir / CHECKPOINT_NAME
    batch_size, accumulation = training["batch_size"], training["gradient_accumulation_steps"]
    num_examples = len(data.train)
    if num_examples == 0:
        raise ValueError(f"{plan.task}: the training set is empty")
    epochs = training["epochs"]
    total_steps, warmup_steps = step_counts(num_examples, training)

    lengths = None
    if training["group_by_length"]:
        lengths = [len(data.train[i]["input_ids"]) for i in range(num_examples)]

    module.train()
    optimizer = method.make_optimizer(module, training)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total_steps, warmup_steps))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    trainable = [p for p in module.parameters() if p.requires_grad]
    identity = as_loaded({"phase": plan.phase, "task": plan.task, "method_key": plan.method_key, "seed": plan.seed,
                          "rate": plan.rate, "training": training, "method_options": plan.method_options},
                         "identity")

    # groups_done: optimizer steps (groups of micro-batches) already taken in the current epoch
    step, epoch, groups_done, elapsed = 0, 0, 0, 0.0
    checkpoint = restore_training(checkpoint_path, identity, module, optimizer, scheduler, scaler)
    if checkpoint is not None:
        step, epoch, groups_done = checkpoint["step"], checkpoint["epoch"], checkpoint["groups_done"]
        elapsed = checkpoint["train_seconds"]
        extra.update(checkpoint.get("extra") or {})
        log(f"resuming from {checkpoint_path}: step {step}/{total_steps}, epoch {epoch + 1}/{epochs}")

    def checkpoint_now() -> None:
        save_checkpoint(checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "identity": identity, "step": step, "epoch": epoch,
            "groups_done": groups_done, "train_seconds": elapsed + (time.perf_counter() - started),
            "module": trainable_state(module), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "rng": rng_states(), "extra": extra,
        })

    crash_after = os.environ.get(CRASH_HOOK_ENV)
    crash_after = int(crash_after) if crash_after else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    bar = progress_bar(total_steps, step, f"{plan.phase} {plan.task}/{plan.method_key}/seed{plan.seed}"
                       + (f"/{rungraph.rate_folder(plan.rate)}" if plan.rate is not None else ""))
    # The running loss stays a device tensor between progress updates: reading it (float())
    # waits for the GPU, so it is read only every PROGRESS_EVERY steps.
    running_loss, running_count = torch.zeros((), device=device), 0
    try:
        while epoch < epochs and step < total_steps:
            batches = epoch_batches(num_examples, batch_size, plan.seeds.data_order, epoch, lengths)
            groups = [batches[i:i + accumulation] for i in range(0, len(batches), accumulation)]
            for group_index in range(groups_done, len(groups)):
                if step >= total_steps:
                    break
                group = groups[group_index]
                micro_batches = (data.collate([data.train[i] for i in indices]) for indices in group)
                running_loss += training_step(module, method, micro_batches, len(group), optimizer, step=step,
                                              device=device, precision=precision,
                                              max_grad_norm=training["max_grad_norm"], scheduler=scheduler,
                                              scaler=scaler, trainable=trainable)
                step += 1
                groups_done = group_index + 1
                running_count += 1
                if step % PROGRESS_EVERY == 0 or step == total_steps:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{float(running_loss) / running_count:.4f}", refresh=False)
                bar.update(1)
                if step % training["checkpoint_every_steps"] == 0 and step < total_steps:
                    checkpoint_now()
                if crash_after is not None and step >= crash_after:
                    raise SimulatedCrash(f"{CRASH_HOOK_ENV}={crash_after}: stopping after step {step}")
            else:
                epoch, groups_done = epoch + 1, 0
                running_loss, running_count = torch.zeros((), device=device), 0
                if epoch < epochs and step < total_steps:
                    checkpoint_now()
                continue
            break  # max_steps reached inside the epoch
    finally:
        bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    total_seconds = elapsed + (time.perf_counter() - started)
    # epochs actually run, counting a partial last epoch (max_steps) as one
    epochs_run = epoch + (1 if groups_done else 0)
    return TrainOutcome(steps=step, epochs=min(epochs_run, epochs), train_seconds=total_seconds, extra=extra)


# ----------------------------------------------------------------------------- verbs

def execute(plan: RunPlan) -> dict | None:
    """Run a planned train or prune run; returns its metrics (None: it had finished before).

    The run's temporary directory is held with an exclusive lock for the whole job
    (``atomic.claim_dir``): a second process asked for the same run (two workflow instances
    after ``snakemake --unlock``) waits, then finds the run finished and skips it, never
    touching the first one's files. A full disk is reported as "no space left" with the path.
    """
    final_metrics = plan.out_dir / "metrics.json"
    if final_metrics.is_file():
        log(f"{plan.out_dir} is finished (metrics.json exists): skipping")
        return None
    claim = claim_dir(plan.tmp_dir, plan.owner(),
                      on_wait=lambda path: log(f"{path} is held by another process running this run: waiting "
                                               "for it to end"))
    try:
        if final_metrics.is_file():
            log(f"{plan.out_dir} was finished by another process while this one waited: skipping")
            if claim.created:
                clear_dir(claim.path)
                claim.path.rmdir()
            return None
        return _execute_claimed(plan)
    except Exception as error:
        full = disk_full_error(plan.tmp_dir, error)
        if full is not None:
            raise full from error
        raise
    finally:
        claim.release()


def _prepare_train(plan: RunPlan, base: LoadedBase, device):
    """(method, the seeds it uses, the module to train) of a train run."""
    from diffprune.registry import build_method

    method = build_method(plan.method_name, **plan.method_options)
    seeds = method.use_run_seeds(plan.seeds)
    base.model.to(device)
    seed_global_rngs(seeds.model_init)  # what prepare draws (e.g. new module init) is seeded too
    return method, seeds, method.prepare(base.model, base.head_pattern).to(device)


def _prepare_prune(plan: RunPlan, base: LoadedBase, task, device):
    """(method, the seeds it uses, the module to train) of a prune run: the source run's dense
    diff projected to ``plan.rate`` on the base with the source run's head."""
    from diffprune.projection import FixedMaskFinetuning
    from diffprune.tasks import task_label_set

    dense_diff = read_dense_diff_into(base.model, plan.source_dir, base.fingerprint)
    base.model.to(device)
    method = FixedMaskFinetuning(dense_diff=dense_diff, rate=plan.rate, model_id=base.model_id,
                                 task=plan.task, labels=task_label_set(task))
    # The fixed-mask phase draws no gate noise (its mask comes from the source run).
    seeds = method.use_run_seeds(plan.seeds)
    seed_global_rngs(seeds.model_init)
    return method, seeds, method.prepare(base.model, base.head_pattern).to(device)


def _write_run_files(plan: RunPlan, base: LoadedBase, task, method, module,
                     buffers_before: dict) -> tuple[dict, dict | None]:
    """The dense diff hand-over (if prune runs read it), the run's artifact (one payload +
    ``artifact.json``, ``Method.save``) and stats.json, into ``plan.tmp_dir``; returns (the
    payload as {kind: file name}, the stats)."""
    from diffprune.artifact import ArtifactIdentity
    from diffprune.tasks import task_label_set

    tmp = plan.tmp_dir
    handover = None
    if plan.write_dense_diff:
        # The hand-over to the prune runs: it names the base fingerprint (a prune run refuses a
        # diff of another base) and carries the floating buffers training changed with the head.
        diff = method.dense_diff(module)
        if diff is None:
            raise TypeError(f"method {plan.method_name!r} returned no dense diff, but a projected method "
                            f"reuses the runs of {plan.method_key!r}")
        write_dense_diff(tmp, diff, head_state(base.model, base.head_pattern, buffers_before),
                         {"task": plan.task, "method_key": plan.method_key, "method": plan.method_name,
                          "seed": plan.seed, "model_id": base.model_id, "base_fingerprint": base.fingerprint,
                          "head_pattern": base.head_pattern})
        handover = DENSE_DIFF_NAME
    identity = ArtifactIdentity(model_id=base.model_id, fingerprint=base.fingerprint, head_pattern=base.head_pattern,
                                task=plan.task, labels=task_label_set(task), method=plan.method_name,
                                method_key=plan.method_key, options=plan.method_options, phase=plan.phase,
                                rate=plan.rate, seed=plan.seed)
    # A method whose payload is the dense diff (the L0 phase) takes the hand-over as it is.
    payload = method.save(module, tmp, identity, dense_diff=handover)["payload"]
    stats = method.stats(module) if hasattr(method, "stats") else None
    if stats is not None:
        write_json(tmp / "stats.json", json_safe(stats))
    return {payload["kind"]: payload["file"]}, stats


def _publish(plan: RunPlan, metrics: dict) -> None:
    tmp = plan.tmp_dir
    write_json(tmp / "metrics.json", metrics)
    # The ownership marker is the temporary directory's, not the result's.
    (tmp / OWNER_FILE).unlink()
    try:
        publish_dir(tmp, plan.out_dir)
    except BaseException:
        write_json(tmp / OWNER_FILE, plan.owner())  # still this run's, for the next attempt
        raise


def _execute_claimed(plan: RunPlan) -> dict:
    import torch

    clock = PhaseClock()
    tmp = plan.tmp_dir
    # Only the checkpoint survives from an interrupted attempt; partial exports are redone.
    if (tmp / LEGACY_CHECKPOINT_NAME).exists():
        log(f"{tmp / LEGACY_CHECKPOINT_NAME} is a checkpoint in the old pickle format: not read (unpickling can "
            "run code); this run starts afresh")
    clear_dir(tmp, keep=(CHECKPOINT_NAME, OWNER_FILE))

    training = plan.training
    set_thread_count(training["num_threads"])
    device = pick_device()
    precision = resolve_precision(training["precision"], device)
    task, model, _, model_id, data = load_task_and_model(plan.cfg, plan.task, training, plan.data_cfg,
                                                         plan.seeds.model_init, clock)
    with clock.phase("load_model"):  # the method's wrapping of the model counts as loading it
        base = LoadedBase.inspect(model, model_id, plan.cfg["head_pattern"])
        buffers_before = float_buffers(model)
        if plan.phase == "train":
            method, seeds, module = _prepare_train(plan, base, device)
            source_scores = None
        else:
            method, seeds, module = _prepare_prune(plan, base, task, device)
            source_scores = json.loads((plan.source_dir / "metrics.json").read_text()).get("scores")

    extra: dict = {}
    if plan.phase == "prune" and not (tmp / CHECKPOINT_NAME).is_file():
        log("evaluating right after projection (before fixed-mask finetuning)")
        with clock.phase("evaluate_before_finetune"):
            extra["before_finetune"] = evaluate_module(task, module, data, training, device, precision)
        seed_global_rngs(seeds.model_init)  # the evaluation must not shift the training RNG stream

    with clock.phase("train"):
        outcome = train_loop(plan, module, method, data, device, precision, extra)
    if outcome.steps < 1:
        raise ValueError(f"{plan.out_dir}: the run took no optimizer step (epochs {training['epochs']}, "
                         f"max_steps {training['max_steps']}): a run that trained nothing is not published")
    log("evaluating")
    with clock.phase("evaluate"):
        evaluation = evaluate_module(task, module, data, training, device, precision)
    peak_memory = peak_memory_bytes(device)
    with clock.phase("write"):
        exported, stats = _write_run_files(plan, base, task, method, module, buffers_before)

    metrics = run_metrics(plan, base=base, seeds=seeds, method=method, module=module, task=task, data=data,
                          evaluation=evaluation, before_finetune=extra.get("before_finetune"),
                          source_scores=source_scores, stats=stats, exported=exported, run_dir=tmp,
                          outcome=outcome, peak_memory=peak_memory, device_label=device_label(device),
                          precision=precision, num_threads=torch.get_num_threads(), clock=clock)
    (tmp / CHECKPOINT_NAME).unlink(missing_ok=True)
    _publish(plan, metrics)
    scores = metrics["scores"] or {}
    log(f"done: {plan.out_dir} scores {scores}")
    return metrics
