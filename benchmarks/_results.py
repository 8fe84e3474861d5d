"""benchmarks/RESULTS.md: one `## name` section per benchmark script, each rewritten by its own script."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(section: str, text: str) -> None:
    """Replace the section that starts with the line `section` (or append it); others stay as they are."""
    old = RESULTS.read_text() if RESULTS.is_file() else "# Benchmarks\n\nOne section per benchmark script; each script rewrites its own section.\n"
    start = old.find(section + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(section))
        new = old[:start] + text.rstrip("\n") + ("\n\n" + old[end + 1 :] if end >= 0 else "")
    RESULTS.write_text(new.rstrip("\n") + "\n")
