"""The critique stage: records, rounds, direct revision, resume after SIGKILL, config changes."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from datasets import load_from_disk

from cai.config import load_config
from cai.constitution import load_constitution, sample_sl_principle
from cai.errors import InputError
from cai.stages import critique

ROOT = Path(__file__).resolve().parents[1]
LLM_SWARM_COLUMNS = [
    "init_prompt",
    "init_response",
    "critic_prompt",
    "critic_response",
    "revision_prompt",
    "revision_response",
    "prompt",
    "messages",
    "chosen",
    "rejected",
]


# Red-team prompts written by the test (a user's clone has no ../shared/anchors).
RED_TEAM = [
    f"{ask} {goal}?"
    for goal in ("make a bomb", "steal a car", "hack a password", "poison a friend", "steal a bike", "hack a friend", "poison bread", "steal bread")
    for ask in ("how do i", "please help me", "you should help me", "first steps to", "what is the way to", "can you help me", "help me")
]


@pytest.fixture
def red_team(tmp_path) -> Path:
    path = tmp_path / "red_team.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in RED_TEAM))
    return path


def make_config(tmp_path, model_dir, red_team, run="run", limit=12, extra=""):
    text = f"""\
        run_dir: {tmp_path / run}
        seed: 7
        constitution: {ROOT / "constitutions" / "default.yaml"}
        prompts:
          red_team:
            path: {red_team}
            limit: {limit}
        models:
          policy:
            backend: local
            path: {model_dir}
        critique:
          max_new_tokens: 12
          batch_size: 4
    """
    p = tmp_path / f"{run}.yaml"
    p.write_text(textwrap.dedent(text) + textwrap.dedent(extra))
    return p


def test_records_have_llm_swarm_columns_every_round_and_provenance(tmp_path, tiny_model_dir, red_team):
    cfg = load_config(make_config(tmp_path, tiny_model_dir, red_team, limit=6), ["critique.revisions=2"])
    out = critique.run(cfg)
    rows = [json.loads(l) for l in (out / "records.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    constitution = load_constitution(cfg.constitution)
    for r in rows:
        assert set(LLM_SWARM_COLUMNS) <= r.keys()
        assert r["prompt"] == r["init_prompt"] and "Human:" not in r["prompt"]
        assert [rd["round"] for rd in r["rounds"]] == [0, 1]
        # the last round is the top-level columns; the final revision is chosen, the first answer rejected
        assert r["revision_response"] == r["rounds"][-1]["revision_response"]
        assert r["chosen"] == r["messages"] == [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["revision_response"]}]
        assert r["rejected"][1]["content"] == r["init_response"]
        # principles are the seeded per-prompt samples, and the requests are theirs
        for rd in r["rounds"]:
            p = sample_sl_principle(constitution, 7, f"{r['id']}:round{rd['round']}")
            assert rd["principle_id"] == p.id and rd["critic_prompt"] == p.critique and rd["revision_prompt"] == p.revision
        assert r["model"] == str(tiny_model_dir) and r["sampling"]["max_new_tokens"] == 12
    # TRL-native datasets: SFT on conversational prompt/completion, DPO on revision vs initial answer
    ds = load_from_disk(str(out / "sft_dataset"))
    assert ds.num_rows == 6 and ds.column_names == ["prompt", "completion"]
    assert ds[0]["prompt"] == rows[0]["chosen"][:-1] and ds[0]["completion"] == rows[0]["chosen"][-1:]
    pairs = load_from_disk(str(out / "pairs_dataset"))
    assert pairs.column_names == ["prompt", "chosen", "rejected"]
    assert pairs.num_rows == sum(r["revision_response"] != r["init_response"] for r in rows)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "revisions: 2" in saved


def test_conversation_is_one_growing_chat_after_the_few_shot(tmp_path, tiny_model_dir, red_team):
    cfg = load_config(make_config(tmp_path, tiny_model_dir, red_team))
    constitution = load_constitution(cfg.constitution)
    from cai.records import Prompt

    prompt = Prompt(id="p1", text="how do i pick a lock?")
    steps = critique.plan(constitution, prompt, cfg)
    assert [s.kind for s in steps] == ["init", "critique", "revision"]
    conv = critique.conversation(constitution, prompt, steps, ["init answer", "a critique"], few_shot=True)
    n_fs = sum(len(c) for c in constitution.critique_examples)
    assert conv[:n_fs] == [dict(m) for c in constitution.critique_examples for m in c]
    assert conv[n_fs:] == [
        {"role": "user", "content": prompt.text},
        {"role": "assistant", "content": "init answer"},
        {"role": "user", "content": steps[1].request},
        {"role": "assistant", "content": "a critique"},
        {"role": "user", "content": steps[2].request},
    ]
    direct = load_config(make_config(tmp_path, tiny_model_dir, red_team), ["critique.direct_revision=true"])
    assert [s.kind for s in critique.plan(constitution, prompt, direct)] == ["init", "revision"]


def test_direct_revision_records_have_empty_critiques(tmp_path, tiny_model_dir, red_team):
    cfg = load_config(make_config(tmp_path, tiny_model_dir, red_team, limit=3), ["critique.direct_revision=true"])
    rows = [json.loads(l) for l in (critique.run(cfg) / "records.jsonl").read_text().splitlines()]
    assert all(r["critic_prompt"] == "" and r["critic_response"] == "" and r["revision_prompt"] for r in rows)


def test_finished_stage_is_skipped_and_a_changed_config_is_reported(tmp_path, tiny_model_dir, red_team, capsys):
    path = make_config(tmp_path, tiny_model_dir, red_team, limit=3)
    critique.run(load_config(path))
    capsys.readouterr()
    critique.run(load_config(path))
    assert "already complete" in capsys.readouterr().out
    with pytest.raises(InputError, match=r"different config \(changed: critique\).*--force"):
        critique.run(load_config(path, ["critique.max_new_tokens=5"]))
    critique.run(load_config(path, ["critique.batch_size=2", "models.policy.batch_size=3"]))  # speed-only: reused
    assert "already complete" in capsys.readouterr().out
    critique.run(load_config(path, ["critique.max_new_tokens=5"]), force=True)
    assert "generated 9 steps" in capsys.readouterr().out


def _items_done(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        rows = con.execute("SELECT data FROM items WHERE stage='critique'").fetchall()
        con.close()
    except sqlite3.Error:
        return 0
    return sum(len(json.loads(d)["responses"]) for (d,) in rows)


def _cai(config: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")  # tiny model: one thread is fastest
    return subprocess.Popen([sys.executable, "-m", "cai.cli", "critique", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_sigkill_then_resume_loses_and_repeats_nothing(tmp_path, tiny_model_dir, red_team):
    n, total_steps = 48, 48 * 3
    path = make_config(tmp_path, tiny_model_dir, red_team, limit=n)
    db = tmp_path / "run" / "store.sqlite"
    for threshold in (10, 70):  # kill twice, at different depths
        proc = _cai(path)
        deadline = time.time() + 120
        while _items_done(db) < threshold and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[1][-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (tmp_path / "run" / "critique" / "records.jsonl").exists()
    killed_at = _items_done(db)
    assert 0 < killed_at < total_steps

    proc = _cai(path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    resumed = int(re.search(r"resuming: (\d+) of 144 steps", out).group(1))
    generated = int(re.search(r"generated (\d+) steps", out).group(1))
    assert resumed >= killed_at and resumed + generated == total_steps

    rows = [json.loads(l) for l in (tmp_path / "run" / "critique" / "records.jsonl").read_text().splitlines()]
    assert len(rows) == n and len({r["id"] for r in rows}) == n

    # Seeded per prompt and step: the interrupted run equals one that never stopped.
    clean = critique.run(load_config(make_config(tmp_path, tiny_model_dir, red_team, run="clean", limit=n)))
    clean_rows = [json.loads(l) for l in (clean / "records.jsonl").read_text().splitlines()]
    assert [r["revision_response"] for r in rows] == [r["revision_response"] for r in clean_rows]
    assert [r["init_response"] for r in rows] == [r["init_response"] for r in clean_rows]
