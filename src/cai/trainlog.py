"""Training logs in one place: `<run_dir>/logs/<stage>/`, the same for every training stage.

    log = TrainLog.for_stage(config, "pm")  # TensorBoard + scalars.jsonl (+ wandb / trackio if asked)
    log.log(step, {"train/loss": 0.41, "train/lr": 1e-4})
    log.close()

Every training stage (sft, pm, ppo, dpo) writes:
  logs/<stage>/scalars.jsonl   one JSON object per logged step: {"step": N, "<tag>": value, ...};
                               what the report draws its loss curves from
  logs/<stage>/events.*        TensorBoard (`tensorboard --logdir <run_dir>/logs`)
and, when `logging.report_to` names them, a wandb or trackio run named "<run_dir>/<stage>".
TRL's trainers (sft, dpo) log through `TrainLogCallback`; their own `report_to` is off, so nothing
else writes logs anywhere. On resume, rows after the checkpoint's step are dropped, so a step is
never logged twice. With several processes only the main one writes; the values it logs are
reduced over every process (TRL's trainers gather them, pm and ppo all-reduce them).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from cai.errors import InputError
from cai.rundir import RunDir


class TrainLog:
    def __init__(
        self,
        directory: str | Path,
        resume_step: int = 0,
        report_to: tuple[str, ...] = ("tensorboard",),
        project: str = "cai",
        name: str = "",
        enabled: bool = True,
    ):
        self.dir = Path(directory)
        self.enabled = enabled  # False on every process but the main one of a distributed run
        self.path = self.dir / "scalars.jsonl"
        self._tb = self._wandb = self._trackio = None
        self._last: tuple[int, dict[str, float], int] | None = None  # (step, row, file offset of its line)
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_scalars(self.path) if r["step"] <= resume_step] if resume_step else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir), purge_step=resume_step + 1 if resume_step else None)
        if "wandb" in report_to:
            try:
                import wandb
            except ImportError:
                raise InputError("logging.report_to: wandb is not installed (pip install wandb)") from None
            self._wandb = wandb.init(project=project, name=name, dir=str(self.dir), resume="allow", reinit=True)
        if "trackio" in report_to:
            try:
                import trackio
            except ImportError:
                raise InputError("logging.report_to: trackio is not installed (pip install trackio)") from None
            self._trackio = trackio.init(project=project, name=name, resume="allow")

    @classmethod
    def for_stage(cls, config, stage: str, resume_step: int = 0, enabled: bool | None = None) -> TrainLog:
        """The log of a stage of a run: <run_dir>/logs/<stage>/, with the config's logging settings.
        Written by the main process only (enabled=None: whether this is it)."""
        from cai import distributed

        lc = config.logging
        enabled = distributed.is_main() if enabled is None else enabled
        return cls(RunDir(config.run_dir).logs(stage), resume_step, tuple(lc.report_to), lc.project, f"{config.run_dir}/{stage}", enabled)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Log `scalars` at `step`. A second call at the same step (a trainer's closing summary)
        joins the step's row, and only scalars not yet logged at that step go to the trackers."""
        if not self.enabled:
            return
        row = {"step": int(step)} | {k: float(v) for k, v in scalars.items() if isinstance(v, (int, float))}
        new = row  # what the trackers have not seen at this step
        with open(self.path, "rb+" if self.path.exists() else "wb") as f:
            if self._last is not None and self._last[0] == row["step"]:  # rewrite the step's line, joined
                _, earlier, offset = self._last
                new = {k: v for k, v in row.items() if k not in earlier}
                row = earlier | row
            else:
                offset = f.seek(0, os.SEEK_END)
            f.seek(offset)
            f.truncate()
            f.write((json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in row.items()}) + "\n").encode())
        self._last = (row["step"], row, offset)
        row = {"step": row["step"]} | new
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)
        if self._trackio is not None:
            self._trackio.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._trackio is not None:
            self._trackio.finish()


def read_scalars(path: Path) -> list[dict[str, Any]]:
    """The rows of a scalars.jsonl ([] if there is none)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: the rest is still good
                continue
    return rows


def trainer_callback(log: TrainLog, desc: str):
    """A transformers TrainerCallback that sends the Trainer's logs to `log` and shows progress
    (use `quiet(trainer)` to remove the Trainer's own printing of every log dict)."""
    from transformers import TrainerCallback

    from cai import distributed
    from cai.console import progress

    class TrainLogCallback(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = progress(total=state.max_steps, initial=state.global_step, desc=desc, unit="step")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "train_loss" in logs:
                # The Trainer's closing train_loss adds the loss since its last log unreduced: each
                # process has its own; the mean over processes is the run's. (Every process is here.)
                logs = logs | {"train_loss": distributed.mean_over_processes(logs["train_loss"])}
            if logs and state.is_world_process_zero:
                log.log(state.global_step, {f"train/{k}": v for k, v in logs.items() if isinstance(v, (int, float))})

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                loss = next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None)
                self.bar.update(1, note=None if loss is None else f"loss {loss:.4f}")

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    return TrainLogCallback()


def quiet(trainer):
    """Remove the Trainer's PrinterCallback (it prints every log dict when its progress bar is off)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer
