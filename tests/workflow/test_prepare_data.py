"""workflow/scripts/prepare_data.py: link a local copy into resources/, or say clearly why not."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

from workflow_helpers import REPO, snakemake_env

SCRIPT = REPO / "workflow" / "scripts" / "prepare_data.py"


def prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=snakemake_env(), timeout=300)


def test_local_glue_task_is_linked_with_a_manifest(tmp_path):
    rte = tmp_path / "glue" / "RTE"
    rte.mkdir(parents=True)
    (rte / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    (rte / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tc\td\tnot_entailment\n")
    out = tmp_path / "resources" / "glue" / "RTE" / "manifest.json"
    proc = prepare("--task", "rte", "--source", str(tmp_path / "glue"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(out.read_text())
    assert manifest["source"] == "local" and manifest["task"] == "rte"
    assert manifest["files"]["train.tsv"]["md5"] == hashlib.md5((rte / "train.tsv").read_bytes()).hexdigest()
    linked = out.parent / "dev.tsv"
    assert linked.is_symlink() and linked.resolve() == (rte / "dev.tsv").resolve()
    # Running again (e.g. after GLUE_DIR moved) replaces the links instead of failing.
    assert prepare("--task", "rte", "--source", str(tmp_path / "glue"), "--out", str(out)).returncode == 0


def test_local_copy_missing_a_task_folder_is_a_clear_error(tmp_path):
    (tmp_path / "glue").mkdir()
    proc = prepare("--task", "cola", "--source", str(tmp_path / "glue"), "--out", str(tmp_path / "m.json"))
    assert proc.returncode == 1
    assert "has no CoLA/ folder" in proc.stderr and "Hugging Face Hub" in proc.stderr
    assert not (tmp_path / "m.json").exists()


def test_local_copy_missing_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "glue" / "MNLI").mkdir(parents=True)
    (tmp_path / "glue" / "MNLI" / "train.tsv").write_text("x\n")
    proc = prepare("--task", "mnli", "--source", str(tmp_path / "glue"), "--out", str(tmp_path / "m.json"))
    assert proc.returncode == 1
    assert "dev_matched.tsv" in proc.stderr


def test_squad_article_split_is_labelled(tmp_path):
    squad = tmp_path / "squad"
    squad.mkdir()
    for name in ("train.json", "dev.json"):
        (squad / name).write_text(json.dumps({"version": "1.1", "data": []}))
    out = tmp_path / "resources" / "squad" / "manifest.json"
    proc = prepare("--task", "squad", "--source", str(squad), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["note"] == "SQuAD v1.1 dev, article split"


def test_no_local_copy_and_no_hub_names_both_fixes(tmp_path):
    # snakemake_env() sets HF_*_OFFLINE=1: the Hub is unreachable by construction.
    proc = prepare("--task", "rte", "--source", "hub", "--out", str(tmp_path / "m.json"))
    assert proc.returncode == 1
    assert "no local copy and the Hub is unreachable" in proc.stderr
    assert "GLUE_DIR" in proc.stderr
    assert not (tmp_path / "m.json").exists()
