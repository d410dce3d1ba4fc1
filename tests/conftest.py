"""Shared fixtures: paths to the real recordings beside the checkout, skipped when absent."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (real recordings); tests using it skip on a clone without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real recordings not found at {SHARED_DATA} (present only beside a CI checkout)"
        )
    return SHARED_DATA
