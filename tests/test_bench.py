"""The bench's code path on a tiny random BERT: what it prints and reports (not how fast)."""
import json

import pytest
import torch

from diffprune import bench
from diffprune.projection import kept_count

PHASES = ("full", "l0", "fixed")
PEERS = ("plain_full", "trainer_full", "runner_full", "peft_lora", "runner_lora")


@pytest.fixture(autouse=True)
def keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the bench sets the thread count of the whole process


def test_bench_with_peers_prints_every_phase_and_ratio(capsys):
    bench.main(["--model", "tiny-random", "--batch", "2", "--seq", "8", "--warmup", "1", "--steps", "2",
                "--threads", "1", "--device", "cpu", "--peers"])
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["model"] == "tiny-random-bert" and summary["device"] == "cpu"
    assert (summary["batch"], summary["seq"], summary["steps"], summary["precision"]) == (2, 8, 2, "fp32")
    for phase in PHASES:
        assert summary[f"{phase}_seconds_per_step"] > 0 and summary[f"{phase}_peak_mb"] > 0
        assert summary[f"{phase}_seconds_per_step_alone"] > 0
        assert any(line.strip().startswith(f"{phase}:") for line in lines)
    for ratio in ("l0_time_ratio", "l0_mem_ratio", "fixed_time_ratio", "fixed_mem_ratio"):
        assert summary[ratio] > 0
    # drawing the gate sample is part of the L0 step
    assert 0 < summary["l0_noise_seconds_per_step"] < summary["l0_seconds_per_step"]
    assert summary["l0_noise_share_of_full"] > 0
    # without clipping the L0 phase updates inside backward; the projection kept exactly k entries
    assert summary["max_grad_norm"] == 0 and summary["l0_steps_in_backward"] is True
    assert summary["l0_optimizer"] == "AdamWInBackward"
    assert summary["nonzeros"] == kept_count(0.5, summary["diffed_params"])
    for peer in PEERS:
        assert summary[f"{peer}_seconds_per_step"] > 0
    for ratio in ("runner_full_vs_plain", "trainer_full_vs_plain", "runner_lora_vs_peft"):
        assert summary[ratio] > 0
    assert any("HF Trainer" in line for line in lines) and any("PEFT LoRA" in line for line in lines)


def test_bench_with_clipping_keeps_the_gradient_of_delta():
    summary = bench.run("tiny-random", batch=2, seq=8, warmup=1, steps=1, rate=1.0, threads=None, device="cpu",
                        max_grad_norm=1.0, structured=True)
    assert summary["l0_steps_in_backward"] is False and summary["structured"] is True
    assert summary["l0_optimizer"] == "DeltaGradAdamW"
    assert summary["nonzeros"] == kept_count(1.0, summary["diffed_params"])
    assert "runner_full_vs_plain" not in summary


def test_steps_timed_in_turn_see_the_same_rounds():
    """One step of each function per round, in order, after the untimed warm-up rounds: a
    change of load reaches every phase alike."""
    calls = []
    steps = {name: (lambda i, name=name: calls.append((name, i))) for name in ("full", "l0", "fixed")}
    times = bench.time_in_turn(steps, warmup=1, steps=2, device=torch.device("cpu"))
    assert calls == [(name, i) for i in range(3) for name in ("full", "l0", "fixed")]
    assert {name: len(t) for name, t in times.items()} == {"full": 2, "l0": 2, "fixed": 2}
    assert all(t >= 0 for ts in times.values() for t in ts)
