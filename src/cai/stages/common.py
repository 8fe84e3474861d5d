"""What every stage does the same way: seeds, input fingerprints, resume checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cai.errors import InputError
from cai.store import RunStore


def stable_seed(*parts: object) -> int:
    """A seed from its parts, the same in every process (Python's hash() is salted per process)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def file_hash(path: str | Path) -> str:
    """Content hash of a file or a directory tree: inputs that change under a run are noticed."""
    p = Path(path)
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
        if f.is_file():
            h.update(f.relative_to(p).as_posix().encode() if p.is_dir() else b"")
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


# Settings that change how fast a stage runs, not what it produces: changing them between a crash and
# the resume is fine, so they are left out of fingerprints.
SPEED_ONLY = {"batch_size", "prefix_cache", "prefix_cache_gib", "max_concurrency", "max_retries", "timeout_s", "backoff_s"}


def identity(section) -> dict[str, Any] | None:
    """A config section (model spec or stage settings) as it matters for a fingerprint."""
    return None if section is None else section.model_dump(exclude=SPEED_ONLY & set(type(section).model_fields))


def begin(store: RunStore, stage: str, fingerprint: dict[str, Any], force: bool) -> bool:
    """Mark `stage` running under `fingerprint`. True if it is already complete under the same one.

    Output made under a different config is never silently reused: it is an error that names the
    changed keys, unless `force` discards it.
    """
    prev = store.stage(stage)
    fp = json.dumps(fingerprint, sort_keys=True)
    fingerprint = json.loads(fp)  # as it will read back: tuples become lists
    if prev is not None and not force:
        old = json.loads(prev["fingerprint"])
        if old != fingerprint:
            changed = sorted(k for k in fingerprint.keys() | old.keys() if fingerprint.get(k) != old.get(k))
            raise InputError(
                f"{stage}: the run directory holds output made with a different config "
                f"(changed: {', '.join(changed)}). Use another run_dir, or pass --force to redo the stage."
            )
        if prev["status"] == "done":
            return True
    if force:
        store.clear(stage)
    store.set_stage(stage, fp, "running")
    return False


def finish(store: RunStore, stage: str, fingerprint: dict[str, Any], summary: dict[str, Any]) -> None:
    store.set_stage(stage, json.dumps(fingerprint, sort_keys=True), "done", summary)
