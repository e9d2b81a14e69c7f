"""Atomic file writes: a file is either the old one or the complete new one, never half.

Every artefact the project writes (results, reports, plots, sample grids, checkpoints'
JSON, latent caches) goes through :func:`atomic_path`: write to a temporary name in the
same folder, flush to disk, then ``os.replace`` into place. The standard library has the
pieces but no one-call helper, hence this module.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it over ``path`` on success.

    The suffix is kept so that libraries which pick a format from the name (numpy, PIL,
    matplotlib) write the right one. On an exception the temporary file is removed and
    ``path`` is untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.tmp-{os.getpid()}{final.suffix}")
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.is_file():
            tmp.unlink()


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success its files are fsynced and it replaces ``path``.

    For artefacts made of several files (checkpoints, exported models): a kill leaves the old
    folder or the new one, never a mix. On an exception the temporary folder is removed.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as fh:
                    os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: object) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=str))
