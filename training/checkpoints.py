"""Checkpoint folders on disk: listing complete ones, their manifest (every file's size and
SHA-256, written and fsynced before the folder's atomic rename, checked before a resume) and
which one ``train.resume`` names. The loop (:mod:`training.loop`) writes and loads their contents
with accelerate's ``save_state`` / ``load_state``.

Example::

    >>> from training.checkpoints import list_checkpoints
    >>> list_checkpoints("runs/no-such-run")
    []
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

from diffusion.paths import file_sha256
from training.config import ExperimentConfig

logger = logging.getLogger("training.loop")  # the loop's logger: one place to configure

CHECKPOINT_PREFIX = "checkpoint-"
MANIFEST = "manifest.json"  # {file: {"bytes": n, "sha256": hex}} of a checkpoint, written last


def list_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints in ``output_dir/checkpoints``, oldest first. Partly written ones live
    under a temporary name until renamed, so they are never listed."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


class CorruptCheckpointError(ValueError):
    """A checkpoint's files do not match its manifest (truncated, altered or missing)."""


def write_manifest(folder: Path) -> None:
    """Record every file's size and SHA-256 in ``folder/manifest.json``, fsynced with the files, so
    a checkpoint is complete on disk before its rename and a later truncation is detected."""
    entries = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
        entries[str(f.relative_to(folder))] = {"bytes": f.stat().st_size, "sha256": file_sha256(f)}
    with open(folder / MANIFEST, "w") as fh:
        fh.write(json.dumps(entries, indent=1) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def check_manifest(folder: Path) -> None:
    """Raise :class:`CorruptCheckpointError` naming the first file of ``folder`` that is missing or
    differs from ``manifest.json`` (older checkpoints without one are loaded unchecked, logged)."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        logger.warning("checkpoint %s has no %s: its files cannot be checked", folder, MANIFEST)
        return
    earlier = [p for p in list_checkpoints(folder.parent.parent) if p.name < folder.name]
    hint = (f"resume from the previous checkpoint with train.resume={earlier[-1]} (or delete "
            f"{folder})" if earlier else f"delete {folder} or start afresh with train.resume=None")
    for name, want in json.loads(manifest.read_text()).items():
        f = folder / name
        if not f.is_file():
            raise CorruptCheckpointError(f"checkpoint file {f} is missing; {hint}")
        size = f.stat().st_size
        if size != want["bytes"]:
            raise CorruptCheckpointError(f"checkpoint file {f} is truncated or altered: {size} bytes, "
                                         f"{want['bytes']} when written; {hint}")
        if file_sha256(f) != want["sha256"]:
            raise CorruptCheckpointError(f"checkpoint file {f} is altered: its SHA-256 differs from "
                                         f"the one recorded when written; {hint}")


def resume_path(cfg: ExperimentConfig) -> Optional[Path]:
    resume = cfg.train.resume
    if resume is None or resume in ("none", "None", ""):
        return None
    if resume in ("auto", "latest"):
        found = list_checkpoints(cfg.train.output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"train.resume={resume!r} is not a checkpoint folder")
    return path
