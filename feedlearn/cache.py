"""feedlearn's cache folder, shared by tiny models, converted GGUF models and exported data sets, and how an
entry is put in it whole."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_home() -> Path:
    """$FEEDLEARN_CACHE, else ~/.cache/feedlearn."""
    return Path(os.environ.get("FEEDLEARN_CACHE", Path.home() / ".cache" / "feedlearn"))


def build_into(folder: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """Make the cache entry `folder`: `build` writes it into a new folder beside it, `marker` last, and that
    folder is moved into place whole. Processes that build the same entry at once never see (or overwrite)
    each other's half-written files: a leftover without `marker` (a build that crashed midway) is replaced,
    and a build that finds another's identical one moved in first is dropped."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        build(building)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    if folder.exists() and not (folder / marker).exists():
        shutil.rmtree(folder, ignore_errors=True)
    try:
        building.rename(folder)
    except OSError:  # another process moved its identical build in first
        shutil.rmtree(building, ignore_errors=True)
        if not (folder / marker).exists():
            raise
    return folder
