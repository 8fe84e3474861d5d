"""What `cai` prints: a progress bar in a terminal, a one-line update now and then when piped.

    bar = progress(total=360, desc="critique", unit="prompt")
    bar.update(32, note="step 1/3 init, 412 tok/s")
    bar.close()

In a terminal (stderr is a TTY) this is a tqdm bar. Piped or redirected (a log file, CI, `| tee`),
carriage-return redraws would make one unreadable line of thousands of characters, so instead one
plain line is printed every `CAI_PROGRESS_S` seconds (default 30) and at the end:

    [critique] 96/360 prompts (27%), 12 s, step 1/3 init, 412 tok/s

`quiet_third_party()` silences the progress bars and info logs of transformers, datasets and the
Hub (weights loading, "Saving the dataset", ...) unless CAI_VERBOSE=1 asks for them.
"""

from __future__ import annotations

import os
import sys
import time


def interactive() -> bool:
    return sys.stderr.isatty() and os.environ.get("CAI_PROGRESS") != "lines"


def quiet_third_party() -> None:
    """Third-party progress bars and info logs off (set CAI_VERBOSE=1 to keep them)."""
    if os.environ.get("CAI_VERBOSE") == "1":
        return
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")  # deprecation notices meant for library authors
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


class _Lines:
    """The piped form of a progress bar: a plain line every `every_s` seconds and at the end."""

    def __init__(self, total: float, desc: str, unit: str, initial: float, every_s: float):
        self.total, self.desc, self.unit, self.n, self.every_s = total, desc, unit, initial, every_s
        self.t0 = self.last = time.perf_counter()
        self.note = ""

    def update(self, n: float = 1, note: str | None = None) -> None:
        self.n += n
        if note is not None:
            self.note = note
        now = time.perf_counter()
        if now - self.last >= self.every_s and self.n < self.total:
            self.last = now
            self._print()

    def _print(self) -> None:
        pct = f" ({self.n / self.total:.0%})" if self.total else ""
        note = f", {self.note}" if self.note else ""
        print(f"[{self.desc}] {self.n:.0f}/{self.total:.0f} {self.unit}s{pct}, {time.perf_counter() - self.t0:.0f} s{note}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.n > 0 or self.total == 0:
            self._print()


class _Bar:
    def __init__(self, total: float, desc: str, unit: str, initial: float):
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit=unit,
            dynamic_ncols=True,
            leave=True,
            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} [{elapsed}<{remaining}{postfix}]",
        )

    def update(self, n: float = 1, note: str | None = None) -> None:
        if note is not None:
            self.bar.set_postfix_str(note, refresh=False)
        self.bar.update(min(n, self.bar.total - self.bar.n) if self.bar.total else n)

    def close(self) -> None:
        self.bar.close()


class _Silent:
    """The progress of a process that is not the main one of several: the main one shows it."""

    def update(self, n: float = 1, note: str | None = None) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: float, desc: str, unit: str = "item", initial: float = 0):
    """A progress bar in a terminal, periodic one-line updates otherwise (see the module docstring);
    nothing on the processes other than the main one of a distributed run."""
    from cai import distributed

    if not distributed.is_main():
        return _Silent()
    if interactive():
        return _Bar(total, desc, unit, initial)
    return _Lines(total, desc, unit, initial, float(os.environ.get("CAI_PROGRESS_S", "30")))
