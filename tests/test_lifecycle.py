"""The lifecycle every stage shares: one process per run directory, outputs checked before a
finished stage is trusted (rebuilt from the run store where it holds them), a corrupt run store,
truncated inputs, and values that would corrupt a run refused at load."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cai.config import load_config
from cai.errors import InputError
from cai.lifecycle import RunLock, StageRun
from cai.records import Generation
from cai.stages import critique, label
from cai.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


class Echo:
    """A scripted policy: answers every conversation with a fixed text, and counts the calls."""

    name = "echo"

    def __init__(self):
        self.rows = 0

    def generate(self, conversations, params, seeds=None):
        self.rows += len(conversations)
        return [Generation(f"answer {len(c)}", 3, 2, "stop") for c in conversations]

    def option_logprobs(self, conversations, options):
        raise AssertionError("not asked")

    def close(self):
        pass


def config_file(tmp_path: Path, n: int = 5) -> Path:
    prompts = tmp_path / "red.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"how do i do thing {i}?"}) + "\n" for i in range(n)))
    text = f"""\
        run_dir: {tmp_path / "run"}
        constitution: {ROOT / "constitutions" / "default.yaml"}
        prompts:
          red_team: {{path: {prompts}}}
        models:
          policy: {{backend: local, path: unused}}
    """
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------- outputs verified, or rebuilt


@pytest.mark.parametrize("damage", ["delete", "truncate", "edit"])
def test_a_damaged_output_of_a_finished_stage_is_rebuilt_from_the_run_store(tmp_path, damage, capsys):
    cfg = load_config(config_file(tmp_path))
    backend = Echo()
    out = critique.run(cfg, backend=backend)
    records = out / "records.jsonl"
    good = records.read_bytes()
    assert backend.rows == 5 * 3  # init, critique, revision
    if damage == "delete":
        records.unlink()
    elif damage == "truncate":
        records.write_bytes(good[: len(good) // 2])  # cut mid-line
    else:
        records.write_bytes(good.replace(b"answer", b"ANSWER", 1))
    capsys.readouterr()
    again = Echo()
    critique.run(cfg, backend=again)
    assert again.rows == 0  # nothing generated again: every step was in the run store
    assert records.read_bytes() == good
    said = capsys.readouterr().out
    assert "rebuilding it from the run store" in said and str(records) in said
    critique.run(cfg, backend=again)
    assert "already complete" in capsys.readouterr().out


def test_a_damaged_model_of_a_finished_training_stage_is_an_input_error_naming_the_file(tmp_path):
    cfg = load_config(config_file(tmp_path))
    model = tmp_path / "run" / "sft" / "model" / "model.safetensors"
    with StageRun(cfg, "sft", {"x": 1}) as run:
        model.parent.mkdir(parents=True)
        model.write_bytes(b"weights" * 100)
        run.finish({"steps": 1}, [model.parent])
    with StageRun(cfg, "sft", {"x": 1}) as run:
        assert run.complete
    model.write_bytes(b"weights")  # truncated
    with pytest.raises(InputError) as e:
        with StageRun(cfg, "sft", {"x": 1}):
            pass
    assert f"{model.parent}: files changed" in str(e.value) and "--force" in str(e.value)
    model.unlink()
    with pytest.raises(InputError, match="files missing: model.safetensors.*--force"):
        with StageRun(cfg, "sft", {"x": 1}):
            pass
    with StageRun(cfg, "sft", {"x": 1}, force=True) as run:
        assert not run.complete


# ---------------------------------------------------------------- one process per run directory


def test_a_second_process_on_the_same_run_dir_is_refused_and_a_killed_one_leaves_nothing_stale(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys, time; from cai.lifecycle import RunLock\nwith RunLock({str(run_dir)!r}):\n    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(SRC)),
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(InputError, match=rf"run_dir {run_dir} is in use by pid {holder.pid}"):
        with RunLock(run_dir):
            pass
    holder.send_signal(signal.SIGKILL)  # the kernel releases the lock with the process
    holder.wait()
    with RunLock(run_dir):
        with RunLock(run_dir):  # re-entrant within a process (cai run holds it; each stage takes it again)
            pass


def test_two_cai_processes_on_one_run_dir_one_exits_2(tmp_path):
    path = config_file(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import time; from cai.lifecycle import RunLock\nwith RunLock({str(tmp_path / 'run')!r}):\n    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert holder.stdout.readline().strip() == "held"
    try:
        r = subprocess.run([sys.executable, "-m", "cai.cli", "critique", str(path)], capture_output=True, text=True, env=env, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2 and f"is in use by pid {holder.pid}" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- broken run stores and inputs


def test_a_corrupt_run_store_is_exit_2_with_what_to_do(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "store.sqlite").write_bytes(b"this is not a database" * 200)
    with pytest.raises(InputError, match=r"store.sqlite: the run store is not a readable SQLite database .*Move it away"):
        RunStore(tmp_path / "run")
    r = subprocess.run(
        [sys.executable, "-m", "cai.cli", "critique", str(config_file(tmp_path))], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(SRC))
    )
    assert r.returncode == 2 and "not a readable SQLite database" in r.stderr and "Traceback" not in r.stderr


def test_a_truncated_pairs_file_names_the_file_and_line(tmp_path):
    cfg = load_config(config_file(tmp_path))
    pairs = tmp_path / "run" / "sample" / "pairs.jsonl"
    pairs.parent.mkdir(parents=True)
    row = {
        "pair_id": "red_team:a:0-1",
        "prompt_id": "a",
        "kind": "red_team",
        "prompt": [{"role": "user", "content": "q"}],
        "response_a": "x",
        "response_b": "y",
    }
    text = json.dumps(row) + "\n" + json.dumps(row | {"pair_id": "red_team:b:0-1"}) + "\n"
    pairs.write_text(text[:-20])  # cut mid-line, as a killed writer without atomic renames would leave it
    with pytest.raises(InputError, match=rf"{pairs}: line 2: invalid JSON \(the file ends mid-line: was it cut short\?\)"):
        label.run(cfg, backend=Echo())
    pairs.write_text(json.dumps(row | {"prompt": "a string, not a conversation"}) + "\n")
    with pytest.raises(InputError, match=rf"{pairs}: line 1: prompt: Input should be a valid (list|array)"):
        label.run(cfg, backend=Echo())


# ---------------------------------------------------------------- values that would corrupt a run


@pytest.mark.parametrize(
    "override, message",
    [
        ("sample.temperatures=[-1]", r"sample.temperatures\[0\] \(from --set\): Input should be greater than or equal to 0"),
        ("critique.temperature=.nan", r"critique.temperature \(from --set\): Input should be a finite number"),
        ("critique.stop=['']", r"critique.stop\[0\] \(from --set\): String should have at least 1 character"),
        ("seed=18446744073709551616", r"seed \(from --set\): Input should be less than 9223372036854775808"),
        ("seed=-1", r"seed \(from --set\): Input should be greater than or equal to 0"),
        ("sft.epochs=.inf", r"sft.epochs \(from --set\): Input should be a finite number"),
        ("pm.learning_rate=.inf", r"pm.learning_rate \(from --set\): Input should be a finite number"),
        ("dpo.beta=0", r"dpo.beta \(from --set\): Input should be greater than 0"),
        ("ppo.kl_coef=.inf", r"ppo.kl_coef \(from --set\): Input should be a finite number"),
    ],
)
def test_values_that_would_corrupt_a_run_are_refused_at_load(tmp_path, override, message):
    with pytest.raises(InputError, match=message):
        load_config(config_file(tmp_path), [override])
