"""Fixtures shared by every test folder; plain helper functions live in ``helpers.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import SHARED_DATA


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the repository; the test skips when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available at {SHARED_DATA}")
    return SHARED_DATA
