"""Measure serving N tasks from one base: ``python -m diffprune.serve``.

    python -m diffprune.serve --config config/config.yaml --runs results/default/runs \\
        --out results/default/serving.json [--method-key K] [--rate R] [--seed S] [--rounds 30]

Loads the config's pretrained model once, adds one stored diff per task of the run set (a
projected method key's prune runs at one rate and seed) to a ``TaskBank``, and measures:

- switch latency per task: wall time of ``bank.activate(task)`` from another task (the
  previous task's entries written back, then this one's), median and 90th percentile over
  ``--rounds`` round trips through every task;
- resident memory: the base's tensors plus what the bank keeps per task, against N full
  models in memory; and the process's resident set size after the base and after the tasks;
- bytes on disk: the base checkpoint file plus the N diff files, against N full models
  (the base checkpoint's size each: a full finetuned model is the same architecture);
- the same totals extrapolated to the paper's 9 GLUE tasks (mean per-task cost x 9).

Before any number is written every activation is checked bit for bit against a freshly
loaded base with that one diff applied, and the base after ``deactivate`` against its
pristine copy; a mismatch is an error and nothing is written.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from diffprune.rungraph import rate_label

PAPER_TASK_COUNT = 9


def find_diffs(runs: Path, method_key: str | None, rate: float | None, seed: int | None) -> tuple[str, float, int, dict]:
    """(method key, rate, seed, {task: diff path}) of the run set's GLUE prune runs; by default the
    key whose diffs cover most tasks, then the largest rate and smallest seed every one of them has."""
    found: dict[tuple[str, float, int], dict[str, Path]] = {}
    for path in sorted(runs.glob("*/*/rate*/seed*/diff.safetensors")):
        task_name, key_name, rate_name, seed_name = path.relative_to(runs).parts[:4]
        if task_name == "squad":
            # One bank holds one model class (sequence classification / regression heads);
            # SQuAD's span head belongs to another class, with a base of its own.
            continue
        entry = (key_name, float(rate_name[len("rate"):]), int(seed_name[len("seed"):]))
        found.setdefault(entry, {})[task_name] = path
    candidates = {k: v for k, v in found.items()
                  if (method_key is None or k[0] == method_key) and (rate is None or k[1] == rate)
                  and (seed is None or k[2] == seed)}
    if not candidates:
        wanted = ", ".join(f"{n} {v}" for n, v in (("method key", method_key), ("rate", rate), ("seed", seed)) if v is not None)
        raise FileNotFoundError(f"no diff.safetensors under {runs}/<task>/<key>/rate<R>/seed<S>/"
                                + (f" for {wanted}" if wanted else "") + ": run the workflow's prune jobs first")
    best = max(candidates, key=lambda k: (len(candidates[k]), k[1], -k[2]))
    return best[0], best[1], best[2], candidates[best]


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(expected: dict, model) -> str | None:
    """None if ``model``'s state equals ``expected`` bit for bit, else the first differing tensor."""
    import torch

    current = model.state_dict()
    if current.keys() != expected.keys():
        return f"tensor names differ: {sorted(set(current) ^ set(expected))[:3]}"
    for key, value in expected.items():
        if current[key].shape != value.shape or not torch.equal(current[key], value):
            return key
    return None


def _rss_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


def _checkpoint_bytes(model_spec: dict) -> int | None:
    """Size of the base's weights file(s) on disk, where the config names a local checkpoint."""
    from diffprune.models import _checkpoint_location

    try:
        name_or_path, _ = _checkpoint_location(model_spec)
    except (ValueError, RuntimeError):
        return None
    folder = Path(name_or_path)
    files = list(folder.glob("*.safetensors")) if folder.is_dir() else []
    return sum(f.stat().st_size for f in files) or None


def measure(config_path, runs, method_key=None, rate=None, seed=None, rounds: int = 30) -> dict:
    import torch

    from diffprune import settings
    from diffprune.bank import TaskBank
    from diffprune.models import load_pretrained
    from diffprune.seeding import seed_global_rngs
    from diffprune.storage import apply_diff_, load_diff
    from diffprune.tasks import get_task, task_label_set

    runs = Path(runs)
    cfg = settings.load_config(config_path)
    spec = settings.model_spec(cfg)
    key, rate, seed, diffs = find_diffs(runs, method_key, rate, seed)
    tasks = sorted(diffs)
    rss_start = _rss_bytes()
    seed_global_rngs(0)
    base, _, model_id = load_pretrained(spec, get_task(tasks[0]), cfg.get("head_pattern"))
    base.eval()
    pristine = _state(base)
    rss_base = _rss_bytes()
    bank = TaskBank(base, cfg.get("head_pattern"))
    per_task = {}
    for task in tasks:
        start = time.perf_counter()
        staged = bank.add(task, diffs[task], task=task, labels=task_label_set(get_task(task)))
        per_task[task] = {"diff": diffs[task].relative_to(runs).as_posix(), "file_bytes": staged.file_bytes,
                          "nonzeros": sum(index.numel() for _, index, _, _ in staged.entries),
                          "add_ms": 1000 * (time.perf_counter() - start), "resident_bytes": staged.resident_bytes}
    rss_tasks = _rss_bytes()

    # Bit-exactness first: a number about a wrong switch is worth nothing.
    for task in tasks:
        seed_global_rngs(0)
        fresh, _, _ = load_pretrained(spec, get_task(task), cfg.get("head_pattern"))
        apply_diff_(fresh, load_diff(diffs[task]))
        differing = _same(_state(fresh), bank.activate(task))
        del fresh
        if differing is not None:
            raise RuntimeError(f"{task}: the bank's model differs from a fresh base + {diffs[task]} at {differing}")
        per_task[task]["bit_exact"] = True
    bank.deactivate()
    differing = _same(pristine, bank.model)
    if differing is not None:
        raise RuntimeError(f"the base after deactivate differs from the pristine base at {differing}")

    timings = {task: [] for task in tasks}
    order = tasks if len(tasks) > 1 else tasks + [None]
    with torch.inference_mode():
        for _ in range(rounds):
            for task in order:
                start = time.perf_counter()
                bank.activate(task) if task is not None else bank.deactivate()
                if task is not None:
                    timings[task].append(1000 * (time.perf_counter() - start))
    bank.deactivate()
    for task in tasks:
        ordered = sorted(timings[task])
        per_task[task]["switch_ms_median"] = statistics.median(ordered)
        per_task[task]["switch_ms_p90"] = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]

    resident = bank.resident_bytes()
    checkpoint = _checkpoint_bytes(spec) or resident["base"]
    n = len(tasks)
    task_resident = [per_task[t]["resident_bytes"] for t in tasks]
    task_files = [per_task[t]["file_bytes"] for t in tasks]

    def totals(count: int, resident_each: float, file_each: float) -> dict:
        bank_resident = resident["base"] + count * resident_each
        bank_disk = checkpoint + count * file_each
        return {"n_tasks": count,
                "bank_resident_bytes": bank_resident, "full_models_resident_bytes": count * resident["base"],
                "resident_vs_full_models": bank_resident / (count * resident["base"]),
                "bank_disk_bytes": bank_disk, "full_models_disk_bytes": count * checkpoint,
                "disk_vs_full_models": bank_disk / (count * checkpoint)}

    return {
        "model_id": model_id, "config_name": cfg["name"], "method_key": key, "rate": rate, "seed": seed,
        "tasks": tasks, "per_task": per_task, "rounds": rounds,
        "base_resident_bytes": resident["base"], "base_checkpoint_bytes": checkpoint,
        "measured": totals(n, sum(task_resident) / n, sum(task_files) / n),
        "extrapolated": totals(PAPER_TASK_COUNT, sum(task_resident) / n, sum(task_files) / n),
        "base_bit_identical_after_deactivate": True,
        "rss_bytes": {"start": rss_start, "after_base": rss_base, "after_tasks": rss_tasks},
        "device": "cpu", "torch_threads": torch.get_num_threads(),
    }


def format_summary(result: dict) -> str:
    lines = [f"{result['model_id']}, {result['method_key']} at {rate_label(result['rate'])}%, seed {result['seed']}: "
             f"{len(result['tasks'])} tasks ({', '.join(result['tasks'])}), every switch bit-exact"]
    for task, entry in result["per_task"].items():
        lines.append(f"  {task}: k = {entry['nonzeros']:,}, file {entry['file_bytes']:,} B, resident "
                     f"{entry['resident_bytes']:,} B, switch {entry['switch_ms_median']:.2f} ms median "
                     f"({entry['switch_ms_p90']:.2f} p90), add (read + verify + stage) {entry['add_ms']:.0f} ms")
    for label, block in (("measured", result["measured"]), ("extrapolated", result["extrapolated"])):
        lines.append(f"  {label}, N = {block['n_tasks']}: resident {block['bank_resident_bytes'] / 1e6:.2f} MB vs "
                     f"{block['full_models_resident_bytes'] / 1e6:.2f} MB for N full models "
                     f"({100 * block['resident_vs_full_models']:.1f}%); disk {block['bank_disk_bytes'] / 1e6:.2f} MB vs "
                     f"{block['full_models_disk_bytes'] / 1e6:.2f} MB ({100 * block['disk_vs_full_models']:.1f}%)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffprune.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the run set's config (config/*.yaml): names the base")
    parser.add_argument("--runs", required=True, help="results/<name>/runs")
    parser.add_argument("--out", required=True, help="JSON to write, e.g. results/<name>/serving.json")
    parser.add_argument("--method-key", default=None)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=30, help="round trips through every task for the timings")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as the runs use)")
    args = parser.parse_args(argv)
    from diffprune.atomic import write_json
    import torch

    torch.set_num_threads(args.threads)
    try:
        result = measure(args.config, args.runs, args.method_key, args.rate, args.seed, args.rounds)
    except (FileNotFoundError, ValueError) as error:
        print(f"diffprune.serve: error: {error}", file=sys.stderr)
        return 2
    write_json(args.out, result)
    print(format_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
