"""Which copy of the data a run read: a content hash of the task's local files.

Runs record the hash in their settings and metrics.json, and the workflow makes it part of
each run's settings, so that pointing ``$GLUE_DIR`` (or ``data.glue_dir``) at a copy whose
files differ re-runs exactly the runs of the tasks whose files changed, in the same
invocation, while an identical copy elsewhere changes nothing.

The hash covers the files a task reads (GLUE: ``train.tsv`` and its dev files; SQuAD: its
train and dev JSON), each by name and MD5: the same MD5s that
``workflow/scripts/prepare_data.py`` records in ``resources/.../manifest.json``, so
``manifest_content_hash`` of a manifest gives the same value. Data loaded from the Hugging
Face Hub have no local files: their hash is None (the dataset is named by its Hub id).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

HASH_PREFIX = "sha256:"


def file_md5(path: Path) -> str:
    digest = hashlib.md5()  # noqa: S324 (a content fingerprint, as the manifest records it)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _combine(md5s: Mapping[str, str]) -> str:
    lines = "".join(f"{name}\t{md5s[name]}\n" for name in sorted(md5s))
    return HASH_PREFIX + hashlib.sha256(lines.encode("utf-8")).hexdigest()


def task_files(task: str, data_cfg: Mapping) -> list[Path] | None:
    """The local files ``task`` reads under the data folders of ``data_cfg`` (None: the Hub)."""
    from diffprune.tasks import GLUE_SPECS  # noqa: PLC0415 (the tasks package imports torch)

    if task == "squad":
        folder = data_cfg.get("squad_dir")
        if not folder:
            return None
        from diffprune.tasks.squad import SquadTask  # noqa: PLC0415

        train, dev, _ = SquadTask().local_files(Path(folder), {})
        return [train, dev]
    folder = data_cfg.get("glue_dir")
    if not folder:
        return None
    spec = GLUE_SPECS[task]
    names = ["train.tsv"] + [split.local_file for split in spec.eval_splits]
    return [Path(folder) / spec.folder / name for name in names]


def task_data_hash(task: str, data_cfg: Mapping) -> str | None:
    """The content hash of the files ``task`` reads (None: loaded from the Hub)."""
    files = task_files(task, data_cfg)
    if files is None:
        return None
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{task}: the local data copy lacks {', '.join(missing)}")
    return _combine({path.name: file_md5(path) for path in files})


def manifest_content_hash(manifest: Mapping, names: list[str]) -> str:
    """The same hash, from the MD5s a ``prepare_data.py`` manifest recorded for ``names``."""
    files = manifest.get("files") or {}
    missing = [name for name in names if name not in files]
    if missing:
        raise ValueError(f"the manifest records no MD5 for {missing}")
    return _combine({name: files[name]["md5"] for name in names})
