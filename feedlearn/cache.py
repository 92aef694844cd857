"""feedlearn's cache folder, shared by tiny models and exported data sets."""

from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    """$FEEDLEARN_CACHE, else ~/.cache/feedlearn."""
    return Path(os.environ.get("FEEDLEARN_CACHE", Path.home() / ".cache" / "feedlearn"))
