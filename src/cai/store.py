"""The run store: where a stage keeps its work so that a killed run resumes where it stopped.

One SQLite database per run directory (`<run_dir>/store.sqlite`, WAL mode). A stage keeps one row
per work item (e.g. one red-team prompt) holding the item's state as JSON; every batch of
finished steps is written in one transaction, so after a SIGKILL the database holds every step
that finished and none that did not. Exports (JSONL, HF datasets) are written to a temporary
name and renamed into place, so no output file is ever half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cai.errors import InputError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    stage TEXT NOT NULL,
    key   TEXT NOT NULL,
    pos   INTEGER NOT NULL,     -- input order, so exports keep it
    data  TEXT NOT NULL,        -- the item's state, JSON
    PRIMARY KEY (stage, key)
);
CREATE TABLE IF NOT EXISTS stages (
    stage       TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,  -- hash of the config that produced the stage's output
    status      TEXT NOT NULL,  -- running | done
    summary     TEXT NOT NULL DEFAULT '{}',
    updated     REAL NOT NULL
);
"""


class RunStore:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "store.sqlite"
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per batch.
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=60)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
            self.db.executescript(_SCHEMA)
            self.db.execute("SELECT count(*) FROM stages").fetchone()
        except sqlite3.DatabaseError as e:
            raise InputError(
                f"{self.path}: the run store is not a readable SQLite database ({e}). Move it away to start the "
                f"run over (finished outputs in {self.run_dir} stay), or use another run_dir."
            ) from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ items

    def items(self, stage: str) -> dict[str, dict[str, Any]]:
        """All items of a stage, in input order."""
        rows = self.db.execute("SELECT key, data FROM items WHERE stage=? ORDER BY pos", (stage,))
        return {k: json.loads(d) for k, d in rows}

    def put(self, stage: str, items: Iterable[tuple[str, int, dict[str, Any]]]) -> None:
        """Insert or replace (key, position, state) items in one transaction."""
        rows = [(stage, k, pos, json.dumps(d, ensure_ascii=False)) for k, pos, d in items]
        with self._transaction():
            self.db.executemany("INSERT OR REPLACE INTO items (stage, key, pos, data) VALUES (?,?,?,?)", rows)

    def clear(self, stage: str) -> None:
        with self._transaction():
            self.db.execute("DELETE FROM items WHERE stage=?", (stage,))
            self.db.execute("DELETE FROM stages WHERE stage=?", (stage,))

    # ------------------------------------------------------------ stage status

    def stage(self, stage: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT fingerprint, status, summary FROM stages WHERE stage=?", (stage,)).fetchone()
        if row is None:
            return None
        return {"fingerprint": row[0], "status": row[1], "summary": json.loads(row[2])}

    def set_stage(self, stage: str, fingerprint: str, status: str, summary: dict[str, Any] | None = None) -> None:
        with self._transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO stages (stage, fingerprint, status, summary, updated) VALUES (?,?,?,?,?)",
                (stage, fingerprint, status, json.dumps(summary or {}), time.time()),
            )

    def _transaction(self):
        store = self

        class _Tx:
            def __enter__(self):
                store.db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *_):
                store.db.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()


# ---------------------------------------------------------------- atomic file writes


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file in the same directory, fsync, rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every object of a JSON Lines file; a line that is not a JSON object is an InputError naming the file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                cut = "" if line.endswith("\n") else " (the file ends mid-line: was it cut short?)"
                raise InputError(f"{path}: line {number}: invalid JSON: {e.msg} (column {e.colno}){cut}") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def save_dataset(path: str | Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """Save rows as a Hugging Face dataset (`datasets.load_from_disk(path)` reads it back), atomically.
    `columns` names the columns of an empty dataset."""
    from datasets import Dataset

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # unique per process
    shutil.rmtree(tmp, ignore_errors=True)
    data = Dataset.from_list(rows) if rows else Dataset.from_dict({c: [] for c in columns or []})
    data.save_to_disk(str(tmp), num_shards=1 if not rows else None)  # (an empty dataset saved with no shard cannot be loaded back)
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
