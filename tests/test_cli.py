"""``python -m diffprune``: argument errors exit early and clearly; a killed run resumes."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from diffprune import cli, runner
from diffprune.checkpoint import CHECKPOINT_NAME

REPO = Path(__file__).resolve().parents[1]
WORDS = "the a cat dog sat on mat big small red blue house tree runs walks near far".split()


def write_rte(glue_dir: Path, train: int = 12, dev: int = 6) -> None:
    rng = random.Random(0)
    folder = glue_dir / "RTE"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("dev", dev)):
        rows = ["index\tsentence1\tsentence2\tlabel"]
        for i in range(count):
            rows.append(f"{i}\t{' '.join(rng.choice(WORDS) for _ in range(5))}\t"
                        f"{' '.join(rng.choice(WORDS) for _ in range(3))}\t{rng.choice(['entailment', 'not_entailment'])}")
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n")


@pytest.fixture
def config(tmp_path) -> str:
    write_rte(tmp_path / "glue")
    path = tmp_path / "cli.yaml"
    path.write_text(textwrap.dedent(f"""
        model: tiny-random
        tasks: [rte]
        training: {{batch_size: 4, epochs: 2, max_seq_length: 32, checkpoint_every_steps: 2}}
        data: {{glue_dir: {tmp_path / 'glue'}}}
        methods:
          full_finetuning:
          nonadaptive: {{method: nonadaptive_diff_pruning}}
    """))
    return str(path)


def run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop(runner.CRASH_HOOK_ENV, None)
    env.update({"DIFFPRUNE_NO_PROGRESS": "1", **(env_extra or {})})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "diffprune", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["train", "--task", "wnli", "--method-key", "full_finetuning", "--seed", "0"], "unknown task 'wnli'"),
    (["train", "--task", "rte", "--method-key", "lora_8", "--seed", "0"], "unknown method key 'lora_8'"),
    (["train", "--task", "rte", "--method-key", "full_finetuning", "--seed", "0", "--set", "epoch=1"],
     "unknown training setting(s) ['epoch']"),
    (["prune", "--task", "rte", "--method-key", "nonadaptive", "--seed", "0", "--rate", "0", "--from", "src"],
     "(0, 100]"),
    (["prune", "--task", "rte", "--method-key", "nonadaptive", "--seed", "0", "--rate", "150", "--from", "src"],
     "(0, 100]"),
])
def test_bad_arguments_exit_2_before_any_work(config, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert cli.main([*args, "--config", config, "--out", str(out)]) == cli.USAGE_ERROR
    assert message in capsys.readouterr().err
    assert not out.exists() and not out.with_name("out.tmp").exists()


def test_missing_data_dir_and_config(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"model: tiny-random\ndata: {{glue_dir: {tmp_path / 'nowhere'}}}\nmethods: {{full_finetuning: }}\n")
    common = ["train", "--task", "rte", "--method-key", "full_finetuning", "--seed", "0", "--out", str(tmp_path / "o")]
    assert cli.main([*common, "--config", str(config)]) == cli.USAGE_ERROR
    assert "data.glue_dir names a data folder that does not exist" in capsys.readouterr().err
    assert cli.main([*common, "--config", str(tmp_path / "absent.yaml")]) == cli.USAGE_ERROR
    assert "config file not found" in capsys.readouterr().err


def test_module_entry_point_reports_errors(config, tmp_path):
    result = run_cli("prune", "--config", config, "--task", "rte", "--method-key", "nonadaptive", "--seed", "0",
                     "--rate", "0.5", "--from", str(tmp_path / "no_such_run"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "no metrics.json there" in result.stderr and "Traceback" not in result.stderr


def test_killed_run_resumes_and_a_finished_run_is_skipped(config, tmp_path, capsys, monkeypatch):
    out = tmp_path / "runs" / "rte" / "full_finetuning" / "seed0"
    args = ["train", "--config", config, "--task", "rte", "--method-key", "full_finetuning", "--seed", "0",
            "--out", str(out)]
    # 12 examples / batch 4 = 3 steps per epoch; checkpoints at steps 2 and 4 and at the end of
    # epoch 1 (step 3); the hook kills the process right after step 4's checkpoint
    crashed = run_cli(*args, env_extra={runner.CRASH_HOOK_ENV: "4"})
    assert crashed.returncode == 1 and "SimulatedCrash" in crashed.stderr
    assert (out.with_name("seed0.tmp") / CHECKPOINT_NAME).is_file() and not out.exists()

    # the rerun (in-process: one interpreter start is enough for the test) picks it up
    monkeypatch.setenv("DIFFPRUNE_NO_PROGRESS", "1")
    monkeypatch.delenv(runner.CRASH_HOOK_ENV, raising=False)
    assert cli.main(args) == 0
    assert "resuming from" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["epochs"] == 2
    assert not out.with_name("seed0.tmp").exists()

    # finished: a rerun skips without touching it
    assert cli.main(args) == 0
    assert "skipping" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_sharing_verbs_report_convert_and_export_a_diff(tmp_path, capsys):
    import torch

    from diffprune.cli import main
    from diffprune.models import load_pretrained
    from diffprune.projection import FixedMaskModel
    from diffprune.storage import load_diff, save_diff

    model, _, model_id = load_pretrained({"source": "tiny-random"}, "rte")
    dense = {n: torch.ones_like(p) for n, p in model.named_parameters() if not n.startswith("classifier")}
    path = save_diff(tmp_path / "diff.safetensors", FixedMaskModel.from_dense(model, dense, rate=1.0),
                     model_id=model_id, task="rte", labels=["entailment", "not_entailment"])
    assert main(["report", str(path), "--repeats", "1"]) == 0
    assert "limit log2 C(d,k)/8" in capsys.readouterr().out
    assert main(["convert", str(path), str(tmp_path / "bf16.safetensors"), "--values-dtype", "bf16"]) == 0
    assert load_diff(tmp_path / "bf16.safetensors").header["values_dtype"] == "bfloat16"
    assert main(["export", "--diff", str(path), "--out", str(tmp_path / "task")]) == 0
    assert sorted(p.name for p in (tmp_path / "task").iterdir()) == ["diff.safetensors", "diffprune_config.json"]
    assert main(["export", "--diff", str(path), "--out", str(tmp_path / "task")]) == 2  # exists: refused
    assert "not empty" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing.safetensors")]) == 2
