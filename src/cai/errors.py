"""The one exception type that means "the user's input is wrong" (exit code 2), and what the CLI
prints for a failure.

Anything else that escapes a command is a failure of cai or of its environment (exit code 1). Some
of those a user expects and can act on (a full disk, a server that stays down, `| head` closing the
pipe): `explain` turns them into one line instead of a traceback. `cli.main` uses it like this:

    try:
        run_command(args)
        sys.stdout.flush()   # a closed pipe shows up here when the output fit in the buffer
    except (Exception, KeyboardInterrupt) as e:
        return handle(e)

`CAI_DEBUG=1` in the environment shows the traceback for every failure, expected or not.
"""

from __future__ import annotations

import errno
import os
import select
import sqlite3
import sys
import traceback
from pathlib import Path
from typing import TextIO


class InputError(Exception):
    """Bad input a user can fix: a config key, a file, a field. The message says which."""


class BackendError(RuntimeError):
    """A model server kept failing after every retry (5xx, 429, timeouts, dropped connections).

    What the run finished is kept, so running the same command again resumes; the message holds
    the server, the model and the last error."""


# Exit codes beyond 0 (done), 1 (failure) and 2 (bad input), as shells report them.
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what `yes | head` reports for `yes`

_DISK_FULL = {errno.ENOSPC: "no space left on device"}
if hasattr(errno, "EDQUOT"):  # not on Windows
    _DISK_FULL[errno.EDQUOT] = "disk quota exceeded"
_PACKAGE = str(Path(__file__).resolve().parent)


def explain(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, one line for stderr) for a failure a user expects, None for a bug (show the
    traceback). The line is empty for a closed stdout pipe: exit quietly, as Unix tools do."""
    if isinstance(exc, InputError):
        return 2, f"error: {exc}"  # may list several problems, one per line, as config errors do
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted; run the same command again to resume"
    if isinstance(exc, BrokenPipeError) and stdout_closed():
        return EXIT_BROKEN_PIPE, ""
    full = _disk_full(exc)
    if full is not None:
        return 1, f"error: {full}; free some space, then run the same command again to resume"
    backend = next((e for e in _chain(exc) if isinstance(e, BackendError)), None)
    if backend is not None:
        return 1, f"error: {_one_line(backend)}; run the same command again to resume"
    return None


def handle(exc: BaseException, stderr: TextIO | None = None) -> int:
    """Print what the user should see for `exc` (one line, or the traceback of a bug, or both with
    CAI_DEBUG=1) and return the exit code."""
    stderr = stderr or sys.stderr
    explained = explain(exc)
    if explained is None or os.environ.get("CAI_DEBUG") == "1":
        traceback.print_exception(exc, file=stderr)
    if explained is None:
        print("cai failed (exit 1): the traceback above says where (CAI_DEBUG=1 shows it for every failure)", file=stderr)
        return 1
    code, line = explained
    if code == EXIT_BROKEN_PIPE:
        # Python flushes stdout again at exit, which would fail on the closed pipe and print
        # "Exception ignored ... BrokenPipeError"; point stdout at /dev/null instead.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    if line:
        print(line, file=stderr)
    return code


def stdout_closed() -> bool:
    """Whether stdout is a pipe (or socket) whose reader has gone, as after `cai config keys | head`.

    A BrokenPipeError can also come from a socket or a worker process, which is a real failure;
    only the reader of our stdout going away is the quiet case. poll() reports POLLERR for the write
    end of a pipe with no reader left."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # stdout replaced (tests) or closed
        return False
    if not hasattr(select, "poll"):  # Windows: no poll(); a closed pipe is the likely cause there
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _disk_full(exc: BaseException) -> str | None:
    """What filled up ("no space left on device while writing PATH") if exc, or an exception it
    was raised from, is a full disk or quota; None otherwise."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            if e.filename is not None:
                return f"{_DISK_FULL[e.errno]} while writing {e.filename}"
            return f"{_DISK_FULL[e.errno]}{_where(e)}"
        if isinstance(e, sqlite3.OperationalError) and getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return f"no space left for the run store (sqlite: {e}){_where(e)}"
        if os.strerror(errno.ENOSPC) in str(e):  # libraries that put the OS error in their own text
            return f"no space left on device ({_one_line(e)}){_where(e)}"
    return None


def _chain(exc: BaseException):
    """exc, then the exception it was raised from, and so on (`raise ... from`, or during handling)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _where(exc: BaseException) -> str:
    """`" while writing (in cai.store.atomic_write_text)"`: the innermost cai function on the stack,
    for errors that do not name their file (a failed write() or flush() has no file name)."""
    last = None
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(_PACKAGE):
            last = f"{'.'.join(('cai', *path.relative_to(_PACKAGE).with_suffix('').parts))}.{frame.name}"
    return f" while writing (in {last})" if last else ""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
