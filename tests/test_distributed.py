"""Training on several processes: 2 processes under torchrun (gloo) on this CPU, tiny models.

The DDP invariant: sft, pm and dpo on 2 processes end with the weights of 1 process with the same
global batch and seed. Every stage writes its outputs once (one model, one metrics.json, each step
logged once, no leftover temporary files); ppo logs the statistics of both processes' rollouts; a
killed 2-process run resumes (on 2 processes, and on 1); generation stages and bad launches are
refused with exit code 2 before anything starts.

The launches spawn `python -m torch.distributed.run` (or `cai launch`) with OMP_NUM_THREADS=1 and
PYTHONPATH pointing at src; each takes ~10-30 s on a busy 2-core machine.
"""

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tiny
import torch
import yaml
from safetensors.torch import load_file

from cai import cli, distributed
from cai.checkpoint import load_checkpoint, rng_state, save_checkpoint
from cai.config import load_config
from cai.errors import InputError
from cai.store import RunStore
from cai.trainlog import read_scalars

ROOT = Path(__file__).resolve().parents[1]
CONSTITUTION = ROOT / "constitutions" / "default.yaml"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return out | {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]), "CAI_PROGRESS": "lines"}


def torchrun(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc-per-node 2 ARGS` (a free port each time)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


def cai(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cai.cli", *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def write_config(path: Path, run_dir: Path, model_dir: Path, body: str) -> Path:
    head = f"run_dir: {run_dir}\nseed: 3\nconstitution: {CONSTITUTION}\nmodels:\n  policy: {{backend: local, path: {model_dir}}}\nlogging: {{every_steps: 1}}\n"
    path.write_text(head + textwrap.dedent(body))
    return path


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def assert_same_weights(a: Path, b: Path, base: Path, atol: float) -> None:
    """a and b agree within atol, and training moved them much further than that from base."""
    wa, wb, w0 = weights(a), weights(b), weights(base)
    assert wa.keys() == wb.keys()
    diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    moved = max((wa[k] - w0[k]).abs().max().item() for k in wa if k in w0)
    assert diff < atol, f"the 2-process weights differ from the 1-process ones by {diff:.2e}"
    assert moved > 100 * atol, f"training barely moved the weights ({moved:.2e}): the comparison proves nothing"


def logged(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows if key in r]


def assert_same_logs(rows: list[dict], ref: list[dict], keys: tuple[str, ...]) -> None:
    for key in keys:
        got, want = logged(rows, key), logged(ref, key)
        assert got and [s for s, _ in got] == [s for s, _ in want], key
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-5, abs=1e-5), key


def make_pm(model_dir: Path, out: Path) -> None:
    """A preference model with a random score head on the tiny model."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    config.num_labels = 1
    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)


def assert_written_once(run_dir: Path, stage: str) -> list[dict]:
    """One model, one metrics.json, the stage done in the store, no temporary or stray files, each
    logged step once; returns the log's rows."""
    assert (run_dir / stage / "model" / "model.safetensors").is_file()
    assert json.loads((run_dir / stage / "metrics.json").read_text())
    assert sorted(p.name for p in (run_dir / stage).iterdir()) == ["metrics.json", "model"]  # no checkpoints, no .model.*.tmp
    leftovers = [p for p in run_dir.rglob("*") if ".tmp" in p.name or p.name.endswith(".old")]
    assert not leftovers, leftovers
    with RunStore(run_dir) as store:
        assert store.stage(stage)["status"] == "done"
    rows = read_scalars(run_dir / "logs" / stage / "scalars.jsonl")
    for key in {k for r in rows for k in r} - {"step"}:
        steps = [s for s, _ in logged(rows, key)]
        assert steps and steps == sorted(set(steps)), f"{key} logged more than once at a step, or out of order: {steps}"
    return rows


# ---------------------------------------------------------------- pieces, in one process


def test_batch_split_keeps_the_global_batch_and_the_micro_batch_within_memory():
    split = distributed.batch_split
    assert split(8, 8, 1, "x") == (8, 1)  # one process: the config as written
    assert split(4 * 3, 4, 1, "x") == (4, 3)
    assert split(8, 8, 2, "x") == (4, 1)  # 2 processes: half the batch each
    assert split(4 * 4, 4, 2, "x") == (4, 2)  # the same micro-batch, half the accumulation
    assert split(6, 3, 2, "x") == (3, 1)
    assert split(12, 2, 4, "x") == (1, 3)  # per process 3: micro 2 would not divide it
    with pytest.raises(InputError, match=r"sft.batch_size x sft.grad_accum: the global batch of 6 cannot be split evenly over 4 processes"):
        split(6, 6, 4, "sft.batch_size x sft.grad_accum")


def test_shards_are_contiguous_and_cover_everything(monkeypatch):
    items = list(range(7))
    shards = []
    for r in range(3):
        monkeypatch.setenv("WORLD_SIZE", "3")
        monkeypatch.setenv("RANK", str(r))
        shards.append(distributed.shard(items))
    assert shards == [[0, 1], [2, 3], [4, 5, 6]]
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert distributed.shard(items) == items and distributed.is_main() and not distributed.active()


def test_accelerates_one_process_cpu_launch_is_detected():
    asked_two = {"ACCELERATE_USE_CPU": "True", "ACCELERATE_MIXED_PRECISION": "no", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert "mpirun" in distributed.single_process_launch_problem(asked_two)
    assert distributed.single_process_launch_problem({"ACCELERATE_USE_CPU": "True", "ACCELERATE_MIXED_PRECISION": "no"}) is None  # one asked, one run
    assert distributed.single_process_launch_problem(asked_two | {"WORLD_SIZE": "2", "RANK": "0"}) is None  # torchrun started them
    assert distributed.single_process_launch_problem(asked_two | {"PMI_SIZE": "2", "PMI_RANK": "0"}) is None  # mpirun did
    assert distributed.single_process_launch_problem({"MASTER_ADDR": "x"}) is None  # not accelerate


def test_checkpoint_keeps_every_process_rng_and_restores_its_own(tmp_path):
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([param])
    torch.manual_seed(1)
    mine = rng_state()
    torch.manual_seed(2)
    other = rng_state()
    path = save_checkpoint(tmp_path, 4, {"w": {"param": param}}, opt, {"kl_coef": 0.1}, [mine, other])
    for rank, seed in ((0, 1), (1, 2)):
        torch.manual_seed(99)
        _, state = load_checkpoint(path, opt, rank)
        torch.manual_seed(seed)
        expected = torch.rand(3)
        load_checkpoint(path, opt, rank)
        assert torch.equal(torch.rand(3), expected)  # this rank's stream, where it was saved
        assert state == {"kl_coef": 0.1, "step": 4, "world_size": 2}
    torch.manual_seed(99)
    before = rng_state()["torch"]
    load_checkpoint(path, opt, rank=2)  # a third process: nothing saved for it, its RNG is left alone
    assert torch.equal(rng_state()["torch"], before)


def cli_exit(argv: list[str], monkeypatch, capsys, environ: dict[str, str]) -> tuple[int, str]:
    for k in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in environ.items():
        monkeypatch.setenv(k, v)
    code = cli.main(argv)
    return code, capsys.readouterr().err


def test_generation_stages_and_cai_run_are_refused_on_several_processes(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path / "c.yaml", tmp_path / "run", tmp_path, "")
    two = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    for stage in ("critique", "sample", "label", "evaluate"):
        code, err = cli_exit([stage, str(config)], monkeypatch, capsys, two)
        assert code == 2 and f"{stage} generates text and runs in one process" in err and "base_url: [" in err and "docs/scale.md" in err
    code, err = cli_exit(["run", str(config)], monkeypatch, capsys, two)
    assert code == 2 and "cai launch --nproc N STAGE CONFIG" in err
    code, err = cli_exit(["critique", str(config)], monkeypatch, capsys, two | {"RANK": "1"})
    assert code == 2 and err == ""  # every process refuses; the main one says why
    # accelerate on a CPU, asked for 2 processes, started 1: say so instead of training alone
    accel = {"ACCELERATE_USE_CPU": "True", "ACCELERATE_MIXED_PRECISION": "no", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    code, err = cli_exit(["sft", str(config)], monkeypatch, capsys, accel)
    assert code == 2 and "accelerate launch started a single process" in err and "cai launch --nproc N" in err


def test_cai_launch_refuses_before_starting_anything(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path / "c.yaml", tmp_path / "run", tmp_path, "sft: {batch_sise: 2}\n")
    code, err = cli_exit(["launch", "--nproc", "2", "label", str(config)], monkeypatch, capsys, {})
    assert code == 2 and "label generates text and runs in one process" in err
    code, err = cli_exit(["launch", "--nproc", "2", "sft", str(config)], monkeypatch, capsys, {})
    assert code == 2 and "sft.batch_sise (line 7): unknown key" in err  # the config, checked once
    code, err = cli_exit(["launch", "--nproc", "0", "pm", str(config)], monkeypatch, capsys, {})
    assert code == 2 and "--nproc 0" in err
    assert not (tmp_path / "run").exists()


def test_accelerate_configs_are_yaml_and_open_with_their_command():
    from accelerate.commands.config.config_args import ClusterConfig

    files = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
    assert {f.name for f in files} >= {"multi-gpu.yaml", "ddp.yaml", "zero2.yaml", "zero3.yaml", "fsdp.yaml"}
    for f in files:
        text = f.read_text()
        assert text.startswith("# ") and "accelerate launch --config_file configs/accelerate/" + f.name in text.splitlines()[0] + text.splitlines()[1], f
        ClusterConfig.from_yaml_file(str(f))  # what `accelerate launch --config_file` reads: unknown keys raise
        cfg = yaml.safe_load(text)
        assert cfg["distributed_type"] in ("MULTI_GPU", "DEEPSPEED", "FSDP") and cfg["num_processes"] >= 1, f
        if cfg["distributed_type"] == "DEEPSPEED" and cfg["deepspeed_config"]["zero_stage"] == 3:
            assert cfg["deepspeed_config"]["zero3_save_16bit_model"] is True  # the stage gathers the whole model to save it


# ---------------------------------------------------------------- collectives, on 2 processes

PROBE = """
import json, sys, torch
from cai import distributed, losses
torch.manual_seed(0)
distributed.init()
r = distributed.rank()
x, mask = torch.randn(4, 5), (torch.rand(4, 5) > 0.3).float()  # the same on both: each takes its half
out = {"world": distributed.world_size(), "whitened": distributed.masked_whiten(x[2 * r : 2 * r + 2], mask[2 * r : 2 * r + 2]).tolist()}
out["expected"] = losses.masked_whiten(x, mask)[2 * r : 2 * r + 2].tolist()
p = torch.nn.Parameter(torch.zeros(3))
p.grad = torch.full((3,), float(r + 1))
distributed.all_reduce_grads([p])
out["grad"] = p.grad.tolist()
out["weighted"] = distributed.weighted_mean(torch.tensor([10.0 * (r + 1)]), 1 + 2 * r).tolist()  # (10*1 + 20*3) / 4
out["gathered"] = distributed.gather_objects(f"rank{r}")
from cai.errors import InputError
def fail():
    raise InputError("main says no")
try:
    distributed.main_decides(fail)
except distributed.MainFailed as e:
    out["followed"] = e.code
except InputError as e:
    out["followed"] = str(e)
out["decided"] = distributed.main_decides(lambda: "from main" if distributed.is_main() else "never")
json.dump(out, open(sys.argv[1] + f"/rank{r}.json", "w"))
distributed.close()
"""


def test_collectives_on_two_processes(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    ok(torchrun("probe.py", str(tmp_path), cwd=tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for out in ranks:
        assert out["world"] == 2
        torch.testing.assert_close(torch.tensor(out["whitened"]), torch.tensor(out["expected"]), rtol=1e-5, atol=1e-5)  # whitened as one batch
        assert out["grad"] == [1.5, 1.5, 1.5]  # averaged
        assert out["weighted"] == [pytest.approx(17.5)]
        assert out["gathered"] == ["rank0", "rank1"]
        assert out["decided"] == "from main"
    assert ranks[0]["followed"] == "main says no" and ranks[1]["followed"] == 2  # the main's error; the other follows with its exit code


# ---------------------------------------------------------------- the training stages, 2 processes vs 1


def sft_config(tmp_path: Path, model_dir: Path, name: str) -> Path:
    run_dir = tmp_path / name
    tiny.write_critique_records(run_dir, [(f"p{i}", f"how do i hack password {i}", "i cannot help with that because it is harmful") for i in range(8)])
    helpful = tmp_path / "helpful.jsonl"
    helpful.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["how do i bake bread", "fix bike", "write poem", "learn python"]))
    return write_config(
        tmp_path / f"{name}.yaml",
        run_dir,
        model_dir,
        f"""\
        prompts:
          helpful: {{path: {helpful}}}
        sft:
          batch_size: 2
          grad_accum: 2
          learning_rate: 0.01
          max_length: 64
          helpful_ratio: 0.5
          helpful_max_new_tokens: 6
          save_steps: 2
          lora: {{r: 4, alpha: 8}}
    """,
    )


def test_sft_on_two_processes_equals_one_and_writes_once(tmp_path, tiny_model_dir):
    """LoRA (seeded init), the starting model's helpful answers (generated by the main process alone),
    12 examples in global batches of 4 (2 x 2 accumulation; on 2 processes 2 each, no accumulation)."""
    from cai.stages import sft

    one = load_config(sft_config(tmp_path, tiny_model_dir, "one"))
    sft.run(one)
    proc = ok(cai("launch", "--nproc", "2", "sft", str(sft_config(tmp_path, tiny_model_dir, "two")), cwd=tmp_path))
    two = tmp_path / "two"
    rows = assert_written_once(two, "sft")
    assert_same_weights(two / "sft" / "model", Path(one.run_dir) / "sft" / "model", tiny_model_dir, atol=1e-5)

    m1, m2 = (json.loads((Path(d) / "sft" / "metrics.json").read_text()) for d in (one.run_dir, two))
    assert m2["batch"] == {"processes": 2, "per_device": 2, "grad_accum": 1, "global": 4} and m1["batch"]["global"] == 4
    assert m2["steps"] == m1["steps"] == 3 and m2["examples"] == m1["examples"] == {"revisions": 8, "helpful": 4}
    assert m2["train_loss"] == pytest.approx(m1["train_loss"], abs=1e-5)  # the mean over both processes' shares
    ref = read_scalars(Path(one.run_dir) / "logs" / "sft" / "scalars.jsonl")
    assert [r["step"] for r in rows] == [r["step"] for r in ref] == [1, 2, 3]
    assert_same_logs(rows, ref, ("train/loss", "train/grad_norm", "train/train_loss"))  # gathered over both processes
    with RunStore(two) as store:
        assert len(store.items("sft-helpful")) == 4  # generated once, by the main process
    assert proc.stdout.count("[sft] 8 revision examples") == 1  # printed once


def preference_rows(n: int, seed: int = 0) -> list[dict]:
    """Chosen answers contain "safe", rejected ones never; soft labels between 0.6 and 1."""
    filler = "the answer is you should help with that here are steps first then finally sure i can".split()
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        chosen = rng.sample(filler, 5)
        chosen.insert(rng.randrange(6), "safe")
        rows.append(
            {
                "prompt": f"how do i {rng.choice(['steal car', 'hack password', 'make a bomb'])} {i}",
                "chosen": " ".join(chosen),
                "rejected": " ".join(rng.sample(filler, 6)),
                "p_chosen": round(rng.uniform(0.6, 1.0), 3),
                "prompt_id": f"p{i}",
            }
        )
    return rows


def dpo_config(tmp_path: Path, model_dir: Path, name: str) -> Path:
    tiny.write_preferences(tmp_path / name, preference_rows(8))
    return write_config(
        tmp_path / f"{name}.yaml",
        tmp_path / name,
        model_dir,
        """\
        dpo:
          batch_size: 4
          learning_rate: 0.01
          max_length: 64
          save_steps: 100
    """,
    )


def test_dpo_on_two_processes_equals_one_and_writes_once(tmp_path, tiny_model_dir):
    """Full fine-tuning, soft labels, a frozen reference copy; 8 pairs in global batches of 4."""
    from cai.stages import dpo

    one = load_config(dpo_config(tmp_path, tiny_model_dir, "one"))
    dpo.run(one)
    ok(torchrun("-m", "cai.cli", "dpo", str(dpo_config(tmp_path, tiny_model_dir, "two")), cwd=tmp_path))
    two = tmp_path / "two"
    rows = assert_written_once(two, "dpo")
    # Full fine-tuning with Adam: an update is lr * m / (sqrt(v) + eps), so for the few weights whose
    # gradient is near eps the rounding of a different summation order shows (measured: 2.5e-5 on
    # one lm_head entry, 1e-7..5e-6 elsewhere, against a movement of 2e-2).
    assert_same_weights(two / "dpo" / "model", Path(one.run_dir) / "dpo" / "model", tiny_model_dir, atol=1e-4)
    m1, m2 = (json.loads((Path(d) / "dpo" / "metrics.json").read_text()) for d in (one.run_dir, two))
    assert m2["batch"] == {"processes": 2, "per_device": 2, "grad_accum": 1, "global": 4}
    assert m2["train_loss"] == pytest.approx(m1["train_loss"], abs=1e-5)
    ref = read_scalars(Path(one.run_dir) / "logs" / "dpo" / "scalars.jsonl")
    assert_same_logs(rows, ref, ("train/loss", "train/rewards/margins", "train/p_chosen", "train/train_loss"))  # gathered over both processes


PM_KILL = """
import os, signal, sys
from cai import distributed
from cai.config import load_config
from cai.stages import pm

distributed.init()

def on_step(step):
    if step == int(sys.argv[2]) and distributed.is_main():
        os.kill(os.getpid(), signal.SIGKILL)  # the main process dies mid-run; torchrun stops the other

pm.run(load_config(sys.argv[1]), on_step=on_step)
"""


def pm_config(tmp_path: Path, model_dir: Path, name: str) -> Path:
    tiny.write_preferences(tmp_path / name, preference_rows(30))
    return write_config(
        tmp_path / f"{name}.yaml",
        tmp_path / name,
        model_dir,
        """\
        pm:
          batch_size: 4
          grad_accum: 2
          learning_rate: 0.01
          epochs: 2
          eval_fraction: 0.2
          save_steps: 3
          lora: {r: 4, alpha: 8}
    """,
    )


def test_pm_killed_on_two_processes_resumes_to_the_one_process_weights(tmp_path, tiny_model_dir):
    """Global batches of 8 pairs (4 x 2 accumulation), 4 + 4 on 2 processes; 21 training pairs, so
    each epoch's last step has 5 (2 + 3). A 2-process run, SIGKILLed after step 5 (checkpoint at 3),
    resumed once on 2 processes and once on 1, ends where an uninterrupted 1-process run does."""
    import shutil

    from cai.stages import pm

    one = load_config(pm_config(tmp_path, tiny_model_dir, "one"))
    pm.run(one)
    m1 = json.loads((Path(one.run_dir) / "pm" / "metrics.json").read_text())

    (tmp_path / "kill.py").write_text(PM_KILL)
    killed = torchrun("kill.py", str(pm_config(tmp_path, tiny_model_dir, "two")), "5", cwd=tmp_path)
    assert killed.returncode != 0
    two = tmp_path / "two"
    ckpt = two / "pm" / "checkpoints" / "checkpoint-3"
    assert [p.name for p in ckpt.parent.iterdir()] == ["checkpoint-3"]
    assert json.loads((ckpt / "state.json").read_text())["world_size"] == 2
    shutil.copytree(two, tmp_path / "two-then-one")

    ok(cai("launch", "--nproc", "2", "pm", str(tmp_path / "two.yaml"), cwd=tmp_path))
    rows = assert_written_once(two, "pm")
    assert_same_weights(two / "pm" / "model", Path(one.run_dir) / "pm" / "model", tiny_model_dir, atol=1e-5)
    m2 = json.loads((two / "pm" / "metrics.json").read_text())
    assert m1["pairs"]["train"] == 21 and m2["resumed_from_step"] == 3 and m2["steps"] == m1["steps"] == 6
    assert m2["held_out"] == pytest.approx(m1["held_out"], abs=1e-5)  # scored in shares, gathered
    assert [s for s, _ in logged(rows, "train/loss")] == list(range(1, m1["steps"] + 1))  # steps 4-5 of the killed run dropped, logged again
    ref = read_scalars(Path(one.run_dir) / "logs" / "pm" / "scalars.jsonl")
    assert_same_logs(rows, ref, ("train/loss", "train/accuracy", "train/grad_norm", "eval/accuracy"))  # all-reduced

    # The batch schedule does not depend on the number of processes: one process can take over.
    config = load_config(tmp_path / "two.yaml", [f"run_dir={tmp_path / 'two-then-one'}"])
    pm.run(config)
    assert_same_weights(tmp_path / "two-then-one" / "pm" / "model", Path(one.run_dir) / "pm" / "model", tiny_model_dir, atol=1e-5)


def test_a_second_launch_on_a_run_dir_in_use_stops_with_one_error(tmp_path, tiny_model_dir):
    from cai.lifecycle import RunLock

    config = pm_config(tmp_path, tiny_model_dir, "busy")
    with RunLock(tmp_path / "busy"):  # another cai process works on this run directory
        proc = cai("launch", "--nproc", "2", "pm", str(config), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("is in use by pid") == 1, proc.stderr  # the main process says it; the other follows quietly
    assert not (tmp_path / "busy" / "pm").exists()


# ---------------------------------------------------------------- ppo: each process its share, statistics over both

PPO_PROBE = """
import json, os, signal, sys
from cai import distributed
from cai.config import load_config
from cai.stages import ppo

distributed.init()
out = open(sys.argv[2] + f"/scores.rank{distributed.rank()}.jsonl", "a")
kill_at = int(sys.argv[3]) if len(sys.argv) > 3 else None  # SIGKILL the main process in this step's rollout
real = ppo.pm_reward_fn
calls = []

def recording(pm, tokenizer):  # the preference model's scores, as each process computes them for its share
    score = real(pm, tokenizer)
    def fn(prompts, responses):
        calls.append(1)
        if kill_at is not None and distributed.is_main() and len(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        s = score(prompts, responses)
        out.write(json.dumps({"prompts": [p[-1]["content"] for p in prompts], "responses": responses, "scores": s.tolist()}) + "\\n")
        out.flush()
        return s
    return fn

ppo.pm_reward_fn = recording
ppo.run(load_config(sys.argv[1]))
distributed.close()
"""


def test_ppo_on_two_processes_logs_each_step_once_with_both_processes_statistics(tmp_path, tiny_model_dir):
    """Each process scores its 2 of the step's 4 prompts (recorded by the probe); the log has each
    step once, with the statistics of all 4; a run killed mid-step resumes to the same numbers."""
    from cai.stages.ppo import adaptive_kl_coef

    run_dir = tmp_path / "run"
    make_pm(tiny_model_dir, run_dir / "pm" / "model")
    texts = ["how do i make a bomb", "fix bike", "write poem", "learn python", "bake bread", "hack password", "poison friend", "steal car"]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    config = write_config(
        tmp_path / "ppo.yaml",
        run_dir,
        tiny_model_dir,
        f"""\
        prompts:
          red_team: {{path: {tmp_path / "prompts.jsonl"}}}
        ppo:
          steps: 3
          rollout_batch: 4
          minibatch_size: 2
          max_new_tokens: 6
          learning_rate: 0.01
          whiten_rewards: true
          adaptive_kl: true
          kl_horizon: 100
          target_kl: 0.5
          save_steps: 2
          lora: {{r: 8, alpha: 16, target_modules: [q_proj, v_proj, lm_head]}}
    """,
    )
    (tmp_path / "probe.py").write_text(PPO_PROBE)
    proc = ok(torchrun("probe.py", str(config), str(tmp_path), cwd=tmp_path))
    rows = assert_written_once(run_dir, "ppo")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert json.loads((run_dir / "ppo" / "metrics.json").read_text())["processes"] == 2
    assert proc.stdout.count("[ppo] policy:") == 1

    shares = [[json.loads(line) for line in (tmp_path / f"scores.rank{r}.jsonl").read_text().splitlines()] for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 3  # both processes ran every step
    differ = 0
    for step, row in enumerate(rows):
        a, b = shares[0][step], shares[1][step]
        assert len(a["scores"]) == len(b["scores"]) == 2 and not set(a["prompts"]) & set(b["prompts"])  # 2 prompts each, different ones
        both = a["scores"] + b["scores"]
        assert row["objective/score"] == pytest.approx(sum(both) / 4, abs=1e-6)  # the mean over both processes' rollouts
        differ += abs(sum(a["scores"]) / 2 - sum(b["scores"]) / 2) > 1e-4
    assert differ, "the processes' scores never differed: the test could not tell a local mean from the global one"
    for prev, row in zip(rows, rows[1:]):  # beta adapted from the KL over both processes, with the global rollout batch
        assert row["objective/kl_coef"] == pytest.approx(adaptive_kl_coef(prev["objective/kl_coef"], prev["objective/kl"], 0.5, 100, 4), rel=1e-9)

    # Killed in step 3's rollout (checkpoint at 2), resumed on 2 processes: each restores its own
    # sampling RNG, so step 3 samples the same answers and logs the same numbers.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    config2 = tmp_path / "ppo2.yaml"
    config2.write_text(config.read_text().replace(f"run_dir: {run_dir}", f"run_dir: {tmp_path / 'run2'}"))
    make_pm(tiny_model_dir, tmp_path / "run2" / "pm" / "model")
    assert torchrun("probe.py", str(config2), str(resumed), "3", cwd=tmp_path).returncode != 0
    assert [p.name for p in (tmp_path / "run2" / "ppo" / "checkpoints").iterdir()] == ["checkpoint-2"]
    ok(torchrun("probe.py", str(config2), str(resumed), cwd=tmp_path))
    again = assert_written_once(tmp_path / "run2", "ppo")
    assert [r["step"] for r in again] == [1, 2, 3]
    for key in set(rows[0]) - {"step", "time/step_s"}:
        assert [r[key] for r in again] == pytest.approx([r[key] for r in rows], rel=1e-4, abs=1e-5), key
    for r in range(2):
        lines = [json.loads(line) for line in (resumed / f"scores.rank{r}.jsonl").read_text().splitlines()]
        assert lines[-1]["responses"] == shares[r][2]["responses"]  # the same answers sampled in step 3
