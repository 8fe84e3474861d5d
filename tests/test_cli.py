"""The `cai` command: exit codes 0 / 2 / 1 and messages a user can act on."""

import os
import subprocess
import sys
from pathlib import Path

from anchors import anchor

ROOT = Path(__file__).resolve().parents[1]


def cai(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-m", "cai.cli", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd)


def test_constitution_validate_counts_all_three_formats():
    r = cai("constitution", "validate", ROOT / "constitutions" / "default.yaml")
    assert r.returncode == 0 and "SL principles" in r.stdout and "RL principles" in r.stdout
    r = cai("constitution", "validate", anchor("llm-swarm/constitution_anthropic.json"))
    assert r.returncode == 0 and "16 SL principles, 0 RL principles, 4 few-shot conversations" in r.stdout
    r = cai("constitution", "validate", anchor("anthropic-cai-paper"))
    assert r.returncode == 0 and "16 SL principles, 16 RL principles" in r.stdout


def test_constitution_validate_rejects_a_broken_file_with_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sl_principles:\n  - id: a\n    critique: x\n    revison: y\n")
    r = cai("constitution", "validate", bad)
    assert r.returncode == 2
    assert "bad.yaml" in r.stderr and "sl_principles[0].revison (line 4): unknown key" in r.stderr


def test_bad_config_exits_2_naming_file_key_and_line(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nconstitution: {ROOT / 'constitutions' / 'default.yaml'}\ncritique:\n  revisions: lots\n")
    r = cai("critique", cfg)
    assert r.returncode == 2 and "critique.revisions (line 4)" in r.stderr
    r = cai("critique", tmp_path / "missing.yaml")
    assert r.returncode == 2 and "config file not found" in r.stderr
    r = cai("critique", cfg, "--set", "critique.revisions=2")
    assert r.returncode == 2 and "prompts.red_team" in r.stderr  # the stage says what it still needs


def test_failure_exits_1_with_a_traceback(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = tmp_path / "run.yaml"
    (tmp_path / "red.txt").write_text("hello\n")
    cfg.write_text(
        f"run_dir: {tmp_path / 'run'}\nconstitution: {ROOT / 'constitutions' / 'default.yaml'}\n"
        f"prompts:\n  red_team: {{path: {tmp_path / 'red.txt'}}}\n"
        f"models:\n  policy: {{backend: openai, base_url: 'http://127.0.0.1:{port}/v1', model: m, max_retries: 1, backoff_s: 0.01}}\n"
    )
    r = cai("critique", cfg)
    assert r.returncode == 1, r.stderr
    assert "Traceback" in r.stderr and f"127.0.0.1:{port}" in r.stderr and "answered GET /models" in r.stderr


def test_config_keys_lists_every_contract_key():
    r = cai("config", "keys")
    assert r.returncode == 0
    for key in ("run_dir", "seed", "constitution", "prompts.red_team", "models.policy", "critique.revisions", "critique.max_new_tokens", "critique.batch_size"):
        assert f"\n{key} " in "\n" + r.stdout
