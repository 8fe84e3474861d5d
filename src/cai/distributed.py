"""Several processes, one run: who is who, barriers, all-reduces, and the main process as the only writer.

    cai launch --nproc 2 pm CONFIG
    # = python -m torch.distributed.run --standalone --nproc-per-node 2 -m cai.cli pm CONFIG
    # or accelerate launch --multi_gpu --num_processes 2 -m cai.cli pm CONFIG   (GPUs)

The training stages (sft, pm, ppo, dpo) run data-parallel: every process trains on its shard of
each global batch, gradients are combined across processes, and only the main process (rank 0)
touches the run directory: the run store and its lock, checkpoints, logs, metrics, the final
model. The others wait for it at a barrier (docs/scale.md, "Training on several processes/GPUs").

Two kinds of communication, kept apart:
- tensors (gradients, loss statistics, advantage whitening) go through the default process group:
  gloo on a CPU, NCCL for CUDA tensors (CPU tensors still go through gloo);
- decisions and waits (main_decides, barrier, gather_objects) go through a separate gloo group with
  a long timeout, so followers can wait while the main process writes a large model or generates
  SFT's helpful answers without a NCCL watchdog killing them.

In one process (no WORLD_SIZE in the environment) every function here is the trivial one: rank 0 of
1, barriers return at once, reductions return their input, and nothing is initialised.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch

from cai.errors import InputError

T = TypeVar("T")

# Launchers name the process by these variables: torchrun / accelerate (torch's names), then
# OpenMPI and Intel MPI / MPICH, which accelerate uses to start several processes on CPUs.
_WORLD = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
_RANK = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
_LOCAL_RANK = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")

CONTROL_TIMEOUT = timedelta(hours=12)  # how long followers wait for the main process (saving, generating)
BUCKET_ELEMS = 1 << 25  # gradients are all-reduced in flat buckets of at most this many elements (128 MiB fp32)

_control = None  # the gloo group for decisions and waits (see the module docstring)


def _env_int(names: Sequence[str], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


# ---------------------------------------------------------------- who is who


def world_size() -> int:
    """How many processes train together (1 when not launched by torchrun, accelerate or mpirun)."""
    d = _dist()
    return d.get_world_size() if d else _env_int(_WORLD, 1)


def rank() -> int:
    d = _dist()
    return d.get_rank() if d else _env_int(_RANK, 0)


def local_rank() -> int:
    """The process's index on its machine: which GPU it uses."""
    return _env_int(_LOCAL_RANK, rank())


def active() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """The one process that writes the run directory (rank 0; the only one when not distributed)."""
    return rank() == 0


# ---------------------------------------------------------------- start and stop


def single_process_launch_problem(env: dict[str, str] | None = None) -> str | None:
    """Why this process looks like one of several that were asked for but never started, or None.

    `accelerate launch --num_processes N` on a machine without GPUs starts N processes only through
    mpirun (an accelerate config with an mpirun hostfile); otherwise it starts one, with MASTER_ADDR
    set for the N it was asked for and no rank in the environment. That one process would train
    alone, N times slower than asked, and say nothing.
    """
    env = os.environ if env is None else env
    launched_by_accelerate = any(k.startswith("ACCELERATE_") for k in env)
    if launched_by_accelerate and "MASTER_ADDR" in env and not any(env.get(k) for k in _WORLD):
        return (
            "accelerate launch started a single process although several were asked for: without GPUs, accelerate "
            "starts several only through mpirun (`accelerate config`: mpirun hostfile). Use "
            "`cai launch --nproc N STAGE CONFIG` (torchrun) instead, or drop --num_processes to train in one process"
        )
    return None


def init() -> None:
    """Join the other processes when launched as one of several (no-op otherwise, or if done already).

    Call it before any collective: cai.cli.main does. Accelerate (inside TRL's trainers) finds the
    group initialised and uses it.
    """
    global _control
    import torch.distributed as dist

    n = _env_int(_WORLD, 1)
    if n == 1 or dist.is_initialized():
        return
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(var):
            raise InputError(f"{var} is not set: launch several processes with `cai launch`, torchrun or accelerate launch, which set it")
    if torch.cuda.is_available():
        if local_rank() >= torch.cuda.device_count():
            raise InputError(f"process {local_rank()} of this machine has no GPU of its own ({torch.cuda.device_count()} visible): launch one process per GPU")
        torch.cuda.set_device(local_rank())  # "cuda" now means this process's GPU
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, rank=_env_int(_RANK, 0), world_size=n)
    _control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)


def close() -> None:
    """Leave the process group (torch warns at exit about one left open)."""
    global _control
    d = _dist()
    if d is not None:
        d.destroy_process_group()
    _control = None


# ---------------------------------------------------------------- decisions and waits (main process first)


class MainFailed(Exception):
    """Raised on the other processes when the main process failed in a step they wait for. The main
    process reports the error; the others exit with the same code and print nothing."""

    def __init__(self, code: int):
        super().__init__(f"the main process failed (exit {code})")
        self.code = code


def barrier() -> None:
    """Wait until every process is here."""
    d = _dist()
    if d is not None:
        d.barrier(group=_control)


def broadcast_object(obj: T) -> T:
    """The main process's `obj`, on every process (picklable objects)."""
    d = _dist()
    if d is None:
        return obj
    box = [obj]
    d.broadcast_object_list(box, src=0, group=_control)
    return box[0]


def gather_objects(obj: T) -> list[T]:
    """Every process's `obj`, in rank order, on every process."""
    d = _dist()
    if d is None:
        return [obj]
    out: list[Any] = [None] * d.get_world_size()
    d.all_gather_object(out, obj, group=_control)
    return out


def main_decides(fn: Callable[[], T]) -> T:
    """Run `fn` on the main process only and return its result on every process.

    The others wait. If `fn` raises on the main process, it re-raises there and the others raise
    MainFailed with the exit code the error will have (2 for bad input), so every process stops.
    """
    if not active():
        return fn()
    if is_main():
        try:
            result = fn()
        except BaseException as e:
            from cai.errors import EXIT_INTERRUPTED

            code = 2 if isinstance(e, InputError) else EXIT_INTERRUPTED if isinstance(e, KeyboardInterrupt) else 1
            broadcast_object(("failed", code))
            barrier()  # every process has the news before any of them leaves
            raise
        broadcast_object(("ok", result))
        return result
    status, value = broadcast_object(None)
    if status == "failed":
        barrier()
        raise MainFailed(value)
    return value


# ---------------------------------------------------------------- data: each process's share


def shard(items: Sequence[T]) -> list[T]:
    """This process's contiguous share of `items` (sizes differ by at most one; rank order kept,
    so concatenating every process's shard gives `items` back)."""
    n, r = world_size(), rank()
    lo, hi = len(items) * r // n, len(items) * (r + 1) // n
    return list(items[lo:hi])


def batch_split(global_batch: int, max_micro: int, processes: int, what: str) -> tuple[int, int]:
    """(per-process micro-batch, gradient accumulation steps) for a global batch over `processes`.

    micro * accumulation * processes == global_batch, with the micro-batch at most `max_micro` (the
    memory one process was given) and as large as that allows. One process: (max_micro, global /
    max_micro). `what` names the config keys for the error when the global batch cannot be split.
    """
    if global_batch % processes:
        raise InputError(f"{what}: the global batch of {global_batch} cannot be split evenly over {processes} processes; make it a multiple of {processes}")
    per_process = global_batch // processes
    for accum in range(1, per_process + 1):
        if per_process % accum == 0 and per_process // accum <= max_micro:
            return per_process // accum, accum
    raise AssertionError("unreachable: accum = per_process gives a micro-batch of 1")


# ---------------------------------------------------------------- tensors: sums over every process


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of `x` over every process (a new tensor; `x` itself when alone)."""
    d = _dist()
    if d is None:
        return x
    out = x.detach().clone()
    d.all_reduce(out)
    return out


def mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of every process's entries of `x` together (scalar)."""
    if not active():
        return x.float().mean()
    s = all_reduce_sum(torch.stack([x.float().sum(), torch.tensor(float(x.numel()), device=x.device)]))
    return s[0] / s[1]


def mean_over_processes(value: float) -> float:
    """The mean over processes of a number each one has (e.g. a trainer's training loss over its shard)."""
    return float(mean(torch.tensor([float(value)]))) if active() else value


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """cai.losses.masked_mean over every process's unmasked entries together. (B, T) -> scalar."""
    from cai import losses

    if not active():
        return losses.masked_mean(x, mask)
    s = all_reduce_sum(torch.stack([(x * mask).sum(), mask.sum().to(x.dtype)]))
    return s[0] / s[1].clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """cai.losses.masked_whiten with the mean and variance of every process's unmasked entries
    (two all-reduces), so each process's share is whitened as the whole batch would be. (B, T) -> (B, T)."""
    from cai import losses

    if not active():
        return losses.masked_whiten(x, mask, shift_mean)
    m = masked_mean(x, mask)
    var = masked_mean((x - m) ** 2, mask)
    out = (x - m) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + m


def weighted_mean(values: torch.Tensor, weight: torch.Tensor | float) -> torch.Tensor:
    """sum_p values_p * weight_p / sum_p weight_p over processes p, e.g. per-token statistics of each
    process's minibatch weighted by its token count. values: (K,) -> (K,)."""
    if not active():
        return values
    w = torch.as_tensor(weight, dtype=values.dtype, device=values.device).reshape(1)
    s = all_reduce_sum(torch.cat([values * w, w]))
    return s[:-1] / s[-1].clamp(min=1e-12)


def all_reduce_grads(params: Iterable[torch.nn.Parameter], average: bool = True) -> None:
    """Sum (average=False) or average the gradients of `params` over every process, in place, as
    DistributedDataParallel does after backward; in flat buckets, one all-reduce each. A parameter
    with no gradient on this process (its share of the batch was empty) counts as zeros."""
    d = _dist()
    if d is None:
        return
    groups: dict[tuple, list[torch.Tensor]] = {}  # (device, dtype) -> grads, in parameter order
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    n = d.get_world_size()
    for grads in groups.values():
        bucket: list[torch.Tensor] = []
        for i, g in enumerate(grads):
            bucket.append(g)
            if i == len(grads) - 1 or sum(b.numel() for b in bucket) + grads[i + 1].numel() > BUCKET_ELEMS:
                flat = torch.cat([b.reshape(-1) for b in bucket])
                d.all_reduce(flat)
                if average:
                    flat /= n
                offset = 0
                for b in bucket:
                    b.copy_(flat[offset : offset + b.numel()].view_as(b))
                    offset += b.numel()
                bucket = []


@torch.no_grad()
def broadcast_params(params: Iterable[torch.nn.Parameter]) -> None:
    """Every process starts from the main process's weights (as DistributedDataParallel does)."""
    d = _dist()
    if d is None:
        return
    for p in params:
        d.broadcast(p.data, src=0)


def sharding_requested() -> str | None:
    """ "DeepSpeed" or "FSDP" when `accelerate launch` was given such a config: our own loops (pm,
    ppo) do not shard, they train plain data-parallel with a whole copy of the model per process."""
    for var, name in (("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP")):
        if os.environ.get(var, "false").lower() == "true":
            return name
    return None


def check_device(spec_device: str, key: str) -> None:
    """A fixed GPU index would put every process on the same GPU."""
    if active() and spec_device.startswith("cuda:"):
        raise InputError(
            f"{key}: {spec_device} puts every process on one GPU; with several processes use auto or cuda (each process uses the GPU of its LOCAL_RANK)"
        )


# ---------------------------------------------------------------- TRL trainers: the trained model, whole


def trainer_args(optim, section: str) -> dict[str, Any]:
    """TrainingArguments for this process's share of a stage's global batch, `batch_size x
    grad_accum` examples per optimizer step whatever the number of processes (see batch_split)."""
    micro, accum = batch_split(optim.batch_size * optim.grad_accum, optim.batch_size, world_size(), f"{section}.batch_size x {section}.grad_accum")
    return {
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": accum,
        # Every trainable weight takes part in every step (full fine-tuning or LoRA, no gradient
        # checkpointing), so DDP need not search the graph for unused ones (and warn on every rank).
        "ddp_find_unused_parameters": False,
    }


def batch_layout(args) -> dict[str, int]:
    """How a trainer's global batch was split over the processes (for metrics.json)."""
    return {
        "processes": args.world_size,
        "per_device": args.per_device_train_batch_size,
        "grad_accum": args.gradient_accumulation_steps,
        "global": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
    }


def trained_model(trainer, rebuild: Callable[[], Any]):
    """The model a transformers Trainer trained, whole, on the main process (None on the others).

    Every process must call it. With plain data parallelism every process holds the whole model and
    this is `trainer.model`. Under DeepSpeed ZeRO-3 or FSDP each holds a shard: the weights are
    gathered onto the main process (accelerate's get_state_dict; ZeRO-3 needs
    `stage3_gather_16bit_weights_on_model_save`) and loaded into a fresh copy from `rebuild()`,
    the same architecture (with the same LoRA adapters) on the CPU.
    """
    state = trainer.accelerator.state
    zero3 = getattr(state, "deepspeed_plugin", None) is not None and state.deepspeed_plugin.zero_stage == 3
    if not (zero3 or getattr(state, "fsdp_plugin", None) is not None):
        return trainer.model if is_main() else None
    weights = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if not is_main():
        return None
    model = rebuild()
    model.load_state_dict(weights)
    return model
