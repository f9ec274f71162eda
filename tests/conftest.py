import os
from pathlib import Path

import pytest

# Ray warns on every start unless told how to treat accelerator env vars.
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def feddp_cache(tmp_path, monkeypatch):
    """A private FID cache (reference statistics, the Inception link) for one test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FEDDP_CACHE", str(cache))
    return cache
