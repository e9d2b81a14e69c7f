"""Where the project keeps what it computes once: ``$LDM_LAB_CACHE``, else ~/.cache/ldm_lab."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "LDM_LAB_CACHE"


def cache_base() -> Path:
    """The project's cache folder: ``$LDM_LAB_CACHE``, else ~/.cache/ldm_lab."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ldm_lab")


def cache_root() -> Path:
    return cache_base() / "reference"

