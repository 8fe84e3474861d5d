"""Real data from public projects, read from ../shared/anchors (never copied into the repository).

CI has ../shared/anchors beside the clone; a user's clone does not, so a test that needs one of
these files calls `anchor(...)`, which skips the test with a reason naming the missing file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ANCHORS = Path(__file__).resolve().parents[1].parent / "shared" / "anchors"


def anchor(relative: str) -> Path:
    """The anchor file or directory `relative` (e.g. "hh-rlhf/harmless-base-test.jsonl.gz"), or skip."""
    path = ANCHORS / relative
    if not path.exists():
        pytest.skip(f"anchor file not present: {path} (it lies in ../shared/anchors beside the repository in CI)")
    return path
