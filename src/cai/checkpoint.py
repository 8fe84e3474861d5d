"""Checkpoints: one layout and one contract for every training stage.

    save_checkpoint(rd.checkpoints("pm"), step, {"trainable": params}, optimizer, state)
    path = latest_checkpoint(rd.checkpoints("pm"))        # newest checkpoint-N, or None
    tensors, state = load_checkpoint(path, optimizer)    # restores the RNG states too

`<stage>/checkpoints/checkpoint-N/` is what TRL's trainers write (sft, dpo) and what our own loops
write (pm, ppo): tensors as safetensors, the optimizer state as `optimizer.pt` (tensors and numbers
only, read back with weights_only=True: no pickled code is ever loaded), the RNG states, and
`state.json`. A checkpoint is written to a temporary directory and renamed into place; only then
are older ones removed, so a kill at any moment leaves a complete checkpoint.

With several processes the main one writes the checkpoint, with every process's RNG states
(gathered with `distributed.gather_objects(rng_state())`) and the number of processes; each
process restores its own on resume (`load_checkpoint(path, optimizer, rank)`).
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


def rng_state() -> dict[str, Any]:
    """This process's RNG states: torch's (CPU, and CUDA if present) and Python's `random`."""
    version, py_state, gauss = random.getstate()
    out: dict[str, Any] = {"torch": torch.get_rng_state(), "python": [version, list(py_state), gauss]}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _rng_prefix(rank: int) -> str:
    return "" if rank == 0 else f"rank{rank}."  # rank 0 keeps the single-process names


def save_checkpoint(
    root: str | Path, step: int, tensors: dict[str, dict[str, torch.Tensor]], optimizer, state: dict[str, Any], rng_states: list[dict[str, Any]] | None = None
) -> Path:
    """Write `root/checkpoint-<step>/` atomically, then drop older checkpoints. `tensors` maps a
    file name ("adapter", "value_head", ...) to a state dict. `rng_states`: every process's
    `rng_state()` in rank order (default: this process's alone)."""
    from safetensors.torch import save_file

    rng_states = rng_states if rng_states is not None else [rng_state()]
    root = Path(root)
    final = root / f"checkpoint-{step}"
    tmp = root / f".checkpoint-{step}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, sd in tensors.items():
        save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(tmp / f"{name}.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng: dict[str, torch.Tensor] = {}
    python_rng: dict[str, Any] = {}
    for r, states in enumerate(rng_states):
        rng[_rng_prefix(r) + "torch"] = states["torch"]
        rng |= {f"{_rng_prefix(r)}cuda.{i}": t for i, t in enumerate(states.get("cuda", []))}
        python_rng[_rng_prefix(r) + "python_rng"] = states["python"]
    save_file(rng, str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps(state | {"step": step, "world_size": len(rng_states)} | python_rng))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in root.iterdir():
        if old != final and _NAME.match(old.name):
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, optimizer, rank: int = 0) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """(tensors by file name, state) of a checkpoint; the optimizer is restored, and the RNG states
    of process `rank` if the checkpoint has them (state["world_size"]: how many processes wrote it)."""
    from safetensors.torch import load_file

    path = Path(path)
    tensors = {f.stem: load_file(str(f)) for f in sorted(path.glob("*.safetensors")) if f.stem != "rng"}
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    state = json.loads((path / "state.json").read_text())
    state.setdefault("world_size", 1)  # (checkpoints from before several processes were possible)
    python_rng = {k: state.pop(k) for k in list(state) if k.endswith("python_rng")}
    prefix = _rng_prefix(rank)
    if prefix + "python_rng" in python_rng:
        rng = load_file(str(path / "rng.safetensors"))
        torch.set_rng_state(rng[prefix + "torch"])
        if torch.cuda.is_available() and f"{prefix}cuda.0" in rng:
            torch.cuda.set_rng_state_all([rng[f"{prefix}cuda.{i}"] for i in range(torch.cuda.device_count()) if f"{prefix}cuda.{i}" in rng])
        version, py_state, gauss = python_rng[prefix + "python_rng"]
        random.setstate((version, tuple(py_state), gauss))
    return tensors, state
