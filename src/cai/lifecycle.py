"""What every stage does the same way around its work: one lifecycle, one fingerprint rule.

    fp = fingerprint(seed=config.seed, constitution=file_hash(config.constitution), critique=identity(config.critique))
    with StageRun(config, "critique", fp, force=force, rebuildable=True) as run:
        if run.complete:
            return
        ... run.store.put("critique", items) ...
        run.finish(summary, outputs=[rd.critique_records, rd.critique_sft_dataset])

`StageRun` owns, for one stage:
- the run directory's lock (one process per run directory: `RunLock`);
- the run store (opened on enter, closed on exit whatever happens);
- the fingerprint: what the stage's output depends on. Output made under another fingerprint is
  never silently reused: it is an error naming the changed keys, unless `--force` discards it, or
  the changed keys are all in `reopen_on` (evaluation reopens when a new model appears);
- "already complete": a finished stage is skipped, after checking that every output it recorded
  is still there, whole and unchanged; a stage whose outputs can be rebuilt from the run store
  (`rebuildable`) runs again (and only re-exports), any other is an error naming the file;
- `--force`: the stage's items, status and checkpoints are discarded first;
- the resolved config, saved as `<run_dir>/config.yaml`;
- wall time, and the summary the stage reports (with the backend that produced its data).

With several processes (a training stage under `cai launch`, torchrun or accelerate), only the main
process takes the lock, opens the store and decides; the others wait for its decision (`complete`,
or its error) and, at the end, for its writes: leaving the `with` block is a barrier. Stage code
writes outputs and calls `finish` under `if run.main:`.

Fingerprints: `identity(section)` is a config section minus its speed-only fields, the fields whose
config help says they change how fast a stage runs, not what it produces (batch sizes of
generation, concurrency, retries, prefix caches: marked `speed_only` in cai.config), so they may
change between a crash and the resume. `model_identity(spec)` adds the weights' hash for a local
directory.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cai import distributed
from cai.errors import InputError
from cai.rundir import RunDir
from cai.store import RunStore

# ---------------------------------------------------------------- fingerprints


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
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def speed_only_fields(section) -> set[str]:
    """Fields of a config section marked speed-only (cai.config: json_schema_extra={"speed_only": True})."""
    return {name for name, f in type(section).model_fields.items() if (f.json_schema_extra or {}).get("speed_only")}


def identity(section) -> dict[str, Any] | None:
    """A config section as it matters for a fingerprint: everything but its speed-only fields."""
    if section is None:
        return None
    return section.model_dump(mode="json", exclude=speed_only_fields(section))


def model_identity(spec) -> dict[str, Any] | None:
    """A model spec as it matters for a fingerprint: the spec, and the weights' hash when they are a local directory."""
    if spec is None:
        return None
    out = identity(spec)
    if spec.backend == "local" and Path(spec.path).exists():
        out["sha256"] = file_hash(spec.path)
    return out


def source_identity(source) -> dict[str, Any] | None:
    """A prompt source as it matters for a fingerprint: its settings and the file's hash."""
    if source is None:
        return None
    return identity(source) | {"sha256": file_hash(source.path) if Path(source.path).exists() else None}


def fingerprint(**parts: Any) -> dict[str, Any]:
    """What a stage's output depends on, as it will read back from the run store (tuples become lists)."""
    return json.loads(json.dumps(parts, sort_keys=True, default=str))


# ---------------------------------------------------------------- outputs


def output_record(path: Path) -> dict[str, Any]:
    """Size and hash of an output file, or sizes of every file of an output directory (plus the
    hash of the small ones): what is checked before a finished stage is trusted."""
    if path.is_dir():
        files = {f.relative_to(path).as_posix(): f.stat().st_size for f in sorted(path.rglob("*")) if f.is_file()}
        small = {n: file_hash(path / n) for n, size in files.items() if size <= 1 << 20}
        return {"kind": "dir", "files": files, "sha256": small}
    return {"kind": "file", "size": path.stat().st_size, "sha256": file_hash(path)}


def output_problem(path: Path, recorded: dict[str, Any]) -> str | None:
    """What is wrong with an output since the stage recorded it, or None."""
    if not path.exists():
        return "missing"
    if recorded["kind"] == "file":
        if not path.is_file():
            return "not a file"
        if path.stat().st_size != recorded["size"]:
            return f"size changed ({recorded['size']:,} -> {path.stat().st_size:,} bytes)"
        return None if file_hash(path) == recorded["sha256"] else "content changed"
    now = output_record(path)
    if now["files"] != recorded["files"]:
        missing = sorted(set(recorded["files"]) - set(now["files"]))
        return f"files missing: {', '.join(missing)}" if missing else "files changed"
    return None if now["sha256"] == recorded["sha256"] else "content changed"


# ---------------------------------------------------------------- one process per run directory

_HELD: dict[Path, tuple[int, int]] = {}  # run_dir -> (fd, how many holders in this process)


class RunLock:
    """An OS lock on `<run_dir>/.lock`, held while a process works on the run.

    flock is released by the kernel when the process dies, so a SIGKILL leaves nothing stale. It is
    re-entrant within a process (`cai run` holds it; each stage takes it again). A second process
    gets exit 2: "run_dir ... is in use by pid N".
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir).resolve()

    def __enter__(self) -> RunLock:
        if self.run_dir in _HELD:
            fd, n = _HELD[self.run_dir]
            _HELD[self.run_dir] = (fd, n + 1)
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = RunDir(self.run_dir).lock
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise InputError(f"run_dir {self.run_dir} is in use by pid {holder}: wait for it to finish, or use another run_dir") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD[self.run_dir] = (fd, 1)
        return self

    def __exit__(self, *exc) -> None:
        fd, n = _HELD[self.run_dir]
        if n > 1:
            _HELD[self.run_dir] = (fd, n - 1)
            return
        del _HELD[self.run_dir]
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------- the lifecycle


class StageRun:
    """One run of one stage (see the module docstring).

    complete: True if the stage had already finished under the same fingerprint and its outputs
      are intact: the caller returns at once.
    main: True in the process that writes the run directory (the only one, or rank 0 of several);
      `store` is None in the others.
    """

    def __init__(
        self,
        config,
        stage: str,
        fp: dict[str, Any],
        force: bool = False,
        rebuildable: bool = False,
        reopen_on: Iterable[str] = (),
        clear: Iterable[str] = (),
    ):
        self.config, self.stage, self.fp, self.force = config, stage, fingerprint(**fp), force
        self.rebuildable, self.reopen_on = rebuildable, set(reopen_on)
        self.clear = tuple(clear)  # extra run-store stages this one owns (e.g. "sft-helpful"), cleared by --force
        self.rd = RunDir(config.run_dir)
        self.complete = False
        self.main = distributed.is_main()
        self.store: RunStore | None = None
        self._lock = RunLock(config.run_dir)
        self._t0 = 0.0

    def __enter__(self) -> StageRun:
        from cai.console import quiet_third_party

        quiet_third_party()
        # The main process decides (lock, fingerprint, --force, already complete); the others wait
        # for its answer, or stop with it if it failed (a run_dir in use, a changed config).
        self.complete = distributed.main_decides(self._open)
        return self

    def _open(self) -> bool:
        self._lock.__enter__()
        try:
            self.store = RunStore(self.rd.root)
            self._begin()
        except BaseException:
            self._close()
            raise
        return self.complete

    def _close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
        self._lock.__exit__()

    def __exit__(self, exc_type, *exc) -> None:
        if self.main:
            self._close()
        if exc_type is None:
            distributed.barrier()  # the others leave once the main process has written everything

    def say(self, message: str) -> None:
        if self.main:
            print(f"[{self.stage}] {message}", flush=True)

    def _begin(self) -> None:
        prev = self.store.stage(self.stage)
        if prev is not None and not self.force:
            old = json.loads(prev["fingerprint"])
            changed = sorted(k for k in self.fp.keys() | old.keys() if self.fp.get(k) != old.get(k))
            if changed and not set(changed) <= self.reopen_on:
                raise InputError(
                    f"{self.stage}: the run directory holds output made with a different config "
                    f"(changed: {', '.join(changed)}). Use another run_dir, or pass --force to redo the stage."
                )
            if changed:
                self.say(f"{', '.join(changed)} changed since it last ran; reusing what still holds")
            elif prev["status"] == "done":
                problems = {p: why for p, rec in prev["summary"].get("_outputs", {}).items() if (why := output_problem(self.rd.root / p, rec))}
                if not problems:
                    self.complete = True
                    self.say(f"already complete: {', '.join(prev['summary'].get('_outputs', {})) or 'nothing to write'} in {self.rd.root}")
                    return
                listing = "; ".join(f"{self.rd.root / p}: {why}" for p, why in problems.items())
                if not self.rebuildable:
                    raise InputError(f"{self.stage}: finished, but its output was changed since: {listing}. Run it again with --force.")
                self.say(f"finished, but its output was changed since ({listing}); rebuilding it from the run store")
        if self.force:
            self.store.clear(self.stage)
            for extra in self.clear:
                self.store.clear(extra)
            shutil.rmtree(self.rd.checkpoints(self.stage), ignore_errors=True)
            shutil.rmtree(self.rd.logs(self.stage), ignore_errors=True)
        self.store.set_stage(self.stage, json.dumps(self.fp, sort_keys=True), "running")
        from cai.config import save_config

        save_config(self.config, self.rd.config)
        self._t0 = time.time()

    def finish(self, summary: dict[str, Any], outputs: Iterable[Path] = (), backend: Any = None) -> None:
        """Mark the stage done: its summary (shown by `cai run` and the report), wall time, the
        backend that made its data (a name, or a backend: its name and its counters: tokens,
        retries, neutralised markers, ...), and the size and hash of each output (checked on
        every rerun). Main process only."""
        import dataclasses

        if not self.main:
            raise RuntimeError("StageRun.finish: only the main process records a stage (call it under `if run.main:`)")
        info = {
            "_outputs": {str(Path(p).relative_to(self.rd.root)): output_record(Path(p)) for p in outputs},
            "_wall_s": round(time.time() - self._t0, 1),  # this process's part (a resumed stage's earlier part is not counted)
            "_finished": time.time(),
        }
        if isinstance(backend, str):
            info["_backend"] = backend
        elif backend is not None:
            info["_backend"] = getattr(backend, "name", type(backend).__name__)
            stats = getattr(backend, "stats", None)
            if dataclasses.is_dataclass(stats):
                info["_backend_stats"] = dataclasses.asdict(stats)
        self.store.set_stage(self.stage, json.dumps(self.fp, sort_keys=True), "done", summary | info)


def stage_summary(run_dir: str | Path, stage: str) -> dict[str, Any]:
    """The summary a finished stage recorded ({} if it has not finished)."""
    rd = RunDir(run_dir)
    if not rd.store.is_file():
        return {}
    with RunStore(rd.root) as store:
        info = store.stage(stage)
    return (info or {}).get("summary", {}) if info and info["status"] == "done" else {}


def in_use(run_dir: str | Path) -> bool:
    """True if another process holds the run directory's lock now (a stage is working on it).

    The probe takes a shared flock and drops it at once: it never waits, and a `cai` process that
    starts in that instant is told the run is in use (exit 2) rather than racing it."""
    root = Path(run_dir).resolve()
    if root in _HELD:
        return False  # this process holds it (`cai run` building the report): no stage is running
    path = RunDir(root).lock
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return True
        raise
    finally:
        os.close(fd)  # releases the shared lock if we got it
    return False


def stage_status(run_dir: str | Path, stage: str) -> str:
    """Where a stage stands in the run store: "done"; "running" (started, not finished, and a
    process holds the run directory now); "interrupted" (started, not finished, nobody on it: run
    the stage again to resume it); or "not run"."""
    rd = RunDir(run_dir)
    if not rd.store.is_file():
        return "not run"
    with RunStore(rd.root) as store:
        info = store.stage(stage)
    if info is None:
        return "not run"
    if info["status"] == "done":
        return "done"
    return "running" if in_use(rd.root) else "interrupted"
