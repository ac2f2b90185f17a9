"""Make one task's data available to the workflow's jobs; write a manifest saying how.

    python workflow/scripts/prepare_data.py --task rte --source GLUE_DIR --out resources/glue/RTE/manifest.json
    python workflow/scripts/prepare_data.py --task squad --source hub --out resources/squad/manifest.json

Local source: the task's files are symlinked beside the manifest, so ``resources/glue`` is a
``glue_data`` folder holding exactly the tasks of the config (the jobs read it through
``GLUE_DIR=resources/glue``), and the manifest records each file's size and md5: which
copy of the data produced a result stays on record. ``--source hub``: the task is loaded
once through diffprune's own Hub loader, which fills the Hugging Face cache the jobs then
read. Neither available: exit 1 with a message naming both ways to fix it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

# Runnable from a checkout without installing diffprune.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from diffprune.atomic import write_json  # noqa: E402
from diffprune.tasks import GLUE_SPECS, DataUnavailableError, get_task  # noqa: E402
from diffprune.tasks.glue import HUB_GLUE  # noqa: E402
from diffprune.tasks.squad import HUB_SQUAD, SquadTask  # noqa: E402

HOW_TO_GO_LOCAL = {
    "glue": "set data.glue_dir in the config or $GLUE_DIR to a glue_data folder "
            "(the layout written by the GLUE download script: <TASK>/train.tsv, dev.tsv, ...)",
    "squad": "set data.squad_dir in the config or $SQUAD_DIR to a folder holding "
             "train-v1.1.json and dev-v1.1.json",
}


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def required_files(task: str, source: Path) -> tuple[Path, list[Path], str]:
    """(folder to link from, files that must exist, dataset note) of a local copy."""
    if task == "squad":
        train, dev, note = SquadTask().local_files(source, {})
        return source, [train, dev], note
    spec = GLUE_SPECS[task]
    folder = source / spec.folder
    if not folder.is_dir():
        raise FileNotFoundError(
            f"GLUE task {task}: the local glue_data folder {source} has no {spec.folder}/ folder. "
            f"Add it, or leave data.glue_dir and $GLUE_DIR unset to load GLUE from the Hugging Face Hub.")
    names = ["train.tsv"] + [split.local_file for split in spec.eval_splits]
    return folder, [folder / name for name in names], ""


def link_local(task: str, source: Path, out_dir: Path) -> dict:
    folder, required, note = required_files(task, source)
    missing = [str(path) for path in required if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{task}: the local copy lacks {', '.join(missing)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    # Every regular file of the task folder (test sets and extras too): the loader picks.
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != "manifest.json"):
        link = out_dir / path.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(path.resolve())
        files[path.name] = {"bytes": path.stat().st_size, "md5": md5(path)}
    return {"source": "local", "origin": str(folder.resolve()), "files": files, "note": note}


def load_from_hub(task: str) -> dict:
    """Fill the Hugging Face cache through the same loader the runner uses."""
    family = "squad" if task == "squad" else "glue"
    # Make sure the loader does not pick up a local folder from the environment here: this
    # branch runs only when the workflow resolved "no local copy".
    data_cfg = {"glue_dir": None, "squad_dir": None}
    for var in ("GLUE_DIR", "SQUAD_DIR"):
        os.environ.pop(var, None)
    raw = get_task(task).read_raw(data_cfg)
    splits = raw[0]
    rows = {name: len(split) for name, split in splits.items()}
    dataset = {"squad": {"path": HUB_SQUAD, "config": None}}.get(family, {"path": HUB_GLUE, "config": task})
    return {"source": "hub", "dataset": dataset, "rows": rows,
            "note": raw[2] if task == "squad" else ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=sorted([*GLUE_SPECS, "squad"]))
    parser.add_argument("--source", required=True, help="a local data folder, or 'hub'")
    parser.add_argument("--out", required=True, type=Path, help="manifest.json to write")
    args = parser.parse_args(argv)
    family = "squad" if args.task == "squad" else "glue"
    try:
        if args.source == "hub":
            manifest = load_from_hub(args.task)
        else:
            manifest = link_local(args.task, Path(args.source), args.out.parent)
    except DataUnavailableError as error:
        print(f"prepare_data: {args.task}: no local copy and the Hub is unreachable.\n"
              f"  To use a local copy: {HOW_TO_GO_LOCAL[family]}.\n  Hub error: {error}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as error:
        print(f"prepare_data: {error}", file=sys.stderr)
        return 1
    manifest = {"task": args.task, **manifest}
    write_json(args.out, manifest)
    print(json.dumps({k: v for k, v in manifest.items() if k != "files"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
