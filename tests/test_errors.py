"""cai.errors.explain / handle: one line instead of a traceback for failures a user expects."""

import errno
import io
import os
import sqlite3
import sys

import pytest

from cai.errors import EXIT_BROKEN_PIPE, BackendError, InputError, explain, handle
from cai.store import RunStore


def raised(fn):
    """The exception fn raises (with its traceback, as the CLI sees it)."""
    try:
        fn()
    except BaseException as e:  # noqa: BLE001
        return e
    raise AssertionError("did not raise")


def test_input_error_and_interrupt():
    assert explain(InputError("run.yaml: seed (line 2): bad")) == (2, "error: run.yaml: seed (line 2): bad")
    assert explain(KeyboardInterrupt()) == (130, "interrupted; run the same command again to resume")


def test_a_bug_is_not_explained_and_shows_its_traceback():
    e = raised(lambda: {}["missing"])
    assert explain(e) is None
    err = io.StringIO()
    assert handle(e, err) == 1
    assert "Traceback" in err.getvalue() and "KeyError: 'missing'" in err.getvalue()
    assert err.getvalue().rstrip().endswith("cai failed (exit 1): the traceback above says where (CAI_DEBUG=1 shows it for every failure)")


def test_disk_full_from_a_real_write():
    def write_to_full_device():
        with open("/dev/full", "w") as f:  # Linux: every write fails with ENOSPC
            f.write("x")

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    e = raised(write_to_full_device)
    assert isinstance(e, OSError) and e.errno == errno.ENOSPC
    assert explain(e) == (1, "error: no space left on device; free some space, then run the same command again to resume")


def test_disk_full_names_the_file_when_the_error_does():
    e = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "runs/x/sft/model/model.safetensors")
    code, line = explain(e)
    assert code == 1 and line.startswith("error: no space left on device while writing runs/x/sft/model/model.safetensors;")
    # A library that wraps the OS error in its own exception, with or without `raise ... from`.
    wrapped = RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
    assert explain(wrapped)[1].startswith("error: no space left on device (Error while serializing: IoError(")
    chained = raised(lambda: _raise_from(ValueError("save failed"), e))
    assert explain(chained)[1].startswith("error: no space left on device while writing runs/x/sft/model/model.safetensors;")


def _raise_from(outer, inner):
    raise outer from inner


def test_full_run_store_says_where(tmp_path):
    with RunStore(tmp_path) as store:
        store.put("critique", [("p0", 0, {"text": "x"})])
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {pages}")  # the database cannot grow: SQLITE_FULL
        e = raised(lambda: store.put("critique", [(f"p{i}", i, {"text": "y" * 4000}) for i in range(1, 50)]))
    assert isinstance(e, sqlite3.OperationalError)
    code, line = explain(e)
    assert code == 1
    assert line.startswith("error: no space left for the run store (sqlite: database or disk is full) while writing (in cai.store.")
    assert line.endswith("; free some space, then run the same command again to resume")


def test_backend_that_stays_down():
    message = "http://127.0.0.1:9/v1/chat/completions (model 'm') failed after 6 attempts; last error: HTTP 503: overloaded\n retry later"
    expected = (
        1,
        "error: http://127.0.0.1:9/v1/chat/completions (model 'm') failed after 6 attempts; last error: HTTP 503: overloaded retry later; run the same command again to resume",
    )
    assert explain(BackendError(message)) == expected
    assert explain(raised(lambda: _raise_from(RuntimeError("label batch 3 failed"), BackendError(message)))) == expected
    assert explain(RuntimeError(message)) is None  # only the backend's own giving up is expected


def test_closed_stdout_pipe_is_a_quiet_exit(monkeypatch):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (e.g. `head`) has gone
    pipe = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stdout", pipe)

    def write():
        print("run_dir ...", file=pipe)
        pipe.flush()

    e = raised(write)
    assert isinstance(e, BrokenPipeError)
    assert explain(e) == (EXIT_BROKEN_PIPE, "")
    err = io.StringIO()
    assert handle(e, err) == EXIT_BROKEN_PIPE and err.getvalue() == ""
    pipe.write("more output at exit\n")
    pipe.flush()  # handle pointed stdout at /dev/null: the flush at exit cannot fail again
    monkeypatch.undo()
    pipe.close()


def test_a_broken_pipe_elsewhere_is_not_quiet():
    # pytest's captured stdout is a file: this BrokenPipeError came from somewhere else (a socket,
    # a worker process), which is a failure to report.
    assert explain(BrokenPipeError(errno.EPIPE, "Broken pipe")) is None


def test_cai_debug_shows_the_traceback_of_expected_failures_too(monkeypatch):
    e = raised(lambda: _raise(InputError("run.yaml: seed (line 2): bad")))
    err = io.StringIO()
    assert handle(e, err) == 2 and err.getvalue() == "error: run.yaml: seed (line 2): bad\n"
    monkeypatch.setenv("CAI_DEBUG", "1")
    err = io.StringIO()
    assert handle(e, err) == 2
    assert "Traceback" in err.getvalue() and err.getvalue().endswith("error: run.yaml: seed (line 2): bad\n")


def _raise(exc):
    raise exc
