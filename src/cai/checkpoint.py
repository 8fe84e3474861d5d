"""Checkpoints: one layout and one contract for every training stage.

    save_checkpoint(rd.checkpoints("pm"), step, {"trainable": params}, optimizer, state)
    path = latest_checkpoint(rd.checkpoints("pm"))        # newest checkpoint-N, or None
    tensors, state = load_checkpoint(path, optimizer)    # restores the RNG states too

`<stage>/checkpoints/checkpoint-N/` is what TRL's trainers write (sft, dpo) and what our own loops
write (pm, ppo): tensors as safetensors, the optimizer state as `optimizer.pt` (tensors and numbers
only, read back with weights_only=True: no pickled code is ever loaded), the RNG states, and
`state.json`. A checkpoint is written to a temporary directory and renamed into place; only then
are older ones removed, so a kill at any moment leaves a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: str | Path | None) -> int | None:
    """The step of a `checkpoint-N` directory (None for None)."""
    if path is None:
        return None
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete `checkpoint-N` under `root`, or None."""
    root = Path(root)
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)] if root.is_dir() else []
    return max(found, key=checkpoint_step) if found else None


def save_checkpoint(root: str | Path, step: int, tensors: dict[str, dict[str, torch.Tensor]], optimizer, state: dict[str, Any]) -> Path:
    """Write `root/checkpoint-<step>/` atomically, then drop older checkpoints. `tensors` maps a
    file name ("adapter", "value_head", ...) to a state dict."""
    from safetensors.torch import save_file

    root = Path(root)
    final = root / f"checkpoint-{step}"
    tmp = root / f".checkpoint-{step}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, sd in tensors.items():
        save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(tmp / f"{name}.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    save_file(rng, str(tmp / "rng.safetensors"))
    version, py_state, gauss = random.getstate()
    (tmp / "state.json").write_text(json.dumps(state | {"step": step, "python_rng": [version, list(py_state), gauss]}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in root.iterdir():
        if old != final and _NAME.match(old.name):
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, optimizer) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """(tensors by file name, state) of a checkpoint; the optimizer and the RNG states are restored."""
    from safetensors.torch import load_file

    path = Path(path)
    tensors = {f.stem: load_file(str(f)) for f in sorted(path.glob("*.safetensors")) if f.stem != "rng"}
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and "cuda.0" in rng:
        torch.cuda.set_rng_state_all([rng[f"cuda.{i}"] for i in range(torch.cuda.device_count()) if f"cuda.{i}" in rng])
    state = json.loads((path / "state.json").read_text())
    version, py_state, gauss = state.pop("python_rng")
    random.setstate((version, tuple(py_state), gauss))
    return tensors, state
