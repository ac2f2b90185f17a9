"""``python -m diffprune.bench --peers``: the runner's steps against what users would run instead.

In the bench's process, on its model and batch, with its settings (learning-rate schedule,
clipping, precision): a plain PyTorch full-finetuning loop (forward, backward, clipping, fused
AdamW, ``zero_grad``), the Hugging Face ``Trainer`` (``adamw_torch_fused``, its own loop; a
step is timed from its ``on_step_begin`` to its ``on_step_end`` callback, so the batch is
already collated, as in the other rows), PEFT's LoRA in a plain loop (PEFT's documented
sequence-classification setup, W_q and W_v, rank 8), and the runner's own full-finetuning and
LoRA steps (the registry's methods through ``training_step``).

A runner step and its plain counterpart are timed alternately, step by step, so that both
see the same load on a shared machine; a ratio is median runner time / median plain time.
"""
from __future__ import annotations

import statistics
import tempfile
import time

import torch

from diffprune.bench import synchronize, time_in_turn
from diffprune.device import autocast_context
from diffprune.registry import build_method
from diffprune.training_step import training_step

LORA = {"rank": 8, "lora_alpha": 8}


def plain_step(bench, model, learning_rate: float):
    """The loop a PyTorch user writes: no Method, no training_step."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def step(i):
        with autocast_context(bench.device, bench.precision):
            loss = model(**bench.inputs).loss
        loss.float().backward()
        if bench.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, bench.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def runner_step(bench, method, module, learning_rate: float):
    training = bench.training(learning_rate)
    optimizer = method.make_optimizer(module, training)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler(bench.device.type) if bench.precision == "fp16" else None
    trainable = [p for p in module.parameters() if p.requires_grad]

    def step(i):
        training_step(module, method, [bench.inputs], 1, optimizer, step=i, device=bench.device,
                      precision=bench.precision, max_grad_norm=bench.max_grad_norm, scheduler=scheduler,
                      scaler=scaler, trainable=trainable)

    return step


def alternate(bench, first, second) -> tuple[list[float], list[float]]:
    """Step times of two step functions, run one step each in turn."""
    times = time_in_turn({"first": first, "second": second}, bench.warmup, bench.steps, bench.device)
    return times["first"], times["second"]


def trainer_times(bench, learning_rate: float) -> list[float]:
    """Step times of the Hugging Face Trainer finetuning the whole model on the bench's batch."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            synchronize(bench.device)
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(bench.device)
            self.times.append(time.perf_counter() - self.start)

    rows = [{k: v[i].cpu() for k, v in bench.inputs.items()} for i in range(bench.batch)]
    total = bench.warmup + bench.steps
    callback = StepTimes()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=bench.batch, max_steps=total, learning_rate=learning_rate,
            max_grad_norm=bench.max_grad_norm, optim="adamw_torch_fused", lr_scheduler_type="constant",
            weight_decay=0.0, report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True,
            use_cpu=bench.device.type == "cpu", dataloader_num_workers=0, seed=0,
            bf16=bench.precision == "bf16", fp16=bench.precision == "fp16")
        trainer = Trainer(model=bench.fresh_model(), args=args, train_dataset=rows * total,
                          callbacks=[callback])
        trainer.train()
    return callback.times[bench.warmup:]


def peft_lora_model(bench):
    """LoRA as PEFT documents it for sequence classification (the head trained via modules_to_save)."""
    from peft import LoraConfig, TaskType, get_peft_model

    model = bench.fresh_model()
    targets = build_method("lora").target_modules(model, bench.head_pattern)
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=LORA["rank"], lora_alpha=LORA["lora_alpha"],
                        lora_dropout=0.0, target_modules=targets)
    return get_peft_model(model, config).train()


def run_peers(bench) -> dict:
    out = {}
    full = build_method("full_finetuning")
    runner_module = full.prepare(bench.fresh_model(), bench.head_pattern)
    full.pretrained = None
    runner_full, plain_full = alternate(bench, runner_step(bench, full, runner_module, 1e-5),
                                        plain_step(bench, bench.fresh_model(), 1e-5))
    del runner_module
    trainer_full = trainer_times(bench, 1e-5)

    lora = build_method("lora", **LORA)
    lora_module = lora.prepare(bench.fresh_model(), bench.head_pattern).train()
    runner_lora, peft_lora = alternate(bench, runner_step(bench, lora, lora_module, 5e-4),
                                       plain_step(bench, peft_lora_model(bench), 5e-4))
    medians = {"plain_full": plain_full, "trainer_full": trainer_full, "runner_full": runner_full,
               "peft_lora": peft_lora, "runner_lora": runner_lora}
    for name, times in medians.items():
        out[f"{name}_seconds_per_step"] = round(statistics.median(times), 4)
    plain = statistics.median(plain_full)
    out["runner_full_vs_plain"] = round(statistics.median(runner_full) / plain, 3)
    out["trainer_full_vs_plain"] = round(statistics.median(trainer_full) / plain, 3)
    out["runner_lora_vs_peft"] = round(statistics.median(runner_lora) / statistics.median(peft_lora), 3)
    out["peft_lora_vs_plain_full"] = round(statistics.median(peft_lora) / plain, 3)
    return out


def print_peers(summary: dict) -> None:
    rows = [("plain PyTorch loop, full finetuning", "plain_full", None),
            ("HF Trainer, full finetuning", "trainer_full", "trainer_full_vs_plain"),
            ("runner, full finetuning", "runner_full", "runner_full_vs_plain"),
            ("PEFT LoRA, plain loop", "peft_lora", None),
            ("runner, LoRA", "runner_lora", "runner_lora_vs_peft")]
    for label, key, ratio in rows:
        extra = f"  ({ratio.replace('_', ' ')}: {summary[ratio]:.3f})" if ratio else ""
        print(f"{label:>38}: {summary[f'{key}_seconds_per_step']:.3f} s/step{extra}")
