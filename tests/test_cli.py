"""The `cai` command: exit codes 0 / 2 / 1 and messages a user can act on."""

import os
import subprocess
import sys
from pathlib import Path

from anchors import anchor

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "constitutions" / "default.yaml"


def cai(*args, cwd=None, env=None, timeout=None, preexec_fn=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "cai.cli", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, preexec_fn=preexec_fn
    )


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


def test_a_server_that_stays_down_is_one_line_exit_1_and_cai_debug_shows_the_traceback(tmp_path):
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
    last = r.stderr.rstrip().splitlines()[-1]
    assert "Traceback" not in r.stderr
    assert last.startswith("error: no endpoint of model 'm' answered GET /models") and f"127.0.0.1:{port}" in last
    assert last.endswith("; run the same command again to resume")
    r = cai("critique", cfg, env={"CAI_DEBUG": "1"})
    assert r.returncode == 1 and "Traceback" in r.stderr and "BackendError" in r.stderr


def test_config_keys_lists_every_contract_key():
    r = cai("config", "keys")
    assert r.returncode == 0
    for key in ("run_dir", "seed", "constitution", "prompts.red_team", "models.policy", "critique.revisions", "critique.max_new_tokens", "critique.batch_size"):
        assert f"\n{key} " in "\n" + r.stdout


# ---------------------------------------------------------------- hostile or broken input: exit 2, one line


def _one_error_line(r) -> str:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def _at_most_2_gib():
    # A reader that expands the bomb fails this test with a MemoryError instead of taking the machine.
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_alias_bombs_exit_2_at_once(tmp_path):
    from bombs import CONFIG_HEAD, CONSTITUTION_HEAD, laughs

    # Full size (9**9 items once expanded); the old reader took 40 s and 557 MB on such a file, so
    # the timeout and memory limit are loose bounds, and the message is the real check.
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CONFIG_HEAD + laughs(9))
    line = _one_error_line(cai("config", "show", cfg, timeout=30, preexec_fn=_at_most_2_gib))
    assert line.startswith(f"error: {cfg}: line 3: YAML anchor &l0: anchors and aliases are not allowed")
    const = tmp_path / "c.yaml"
    const.write_text(CONSTITUTION_HEAD + laughs(9))
    line = _one_error_line(cai("constitution", "validate", const, timeout=30, preexec_fn=_at_most_2_gib))
    assert line.startswith(f"error: {const}: line 4: YAML anchor &l0: anchors and aliases are not allowed")


def test_duplicate_keys_and_bad_bytes_exit_2(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nconstitution: {DEFAULT}\ncritique:\n  revisions: 2\nseed: 1\ncritique:\n  revisions: 3\n")
    assert _one_error_line(cai("config", "show", cfg)) == f"error: {cfg}: critique: duplicate key (lines 3 and 6)"
    cfg.write_bytes(f"run_dir: {tmp_path / 'run'}\nconstitution: {DEFAULT}\n".encode() + b"seed: 1 # \xa91999\n")
    at = cfg.read_bytes().index(b"\xa9")
    line = _one_error_line(cai("config", "show", cfg))
    assert line == f"error: {cfg}: line 3: not UTF-8 text: byte 0xa9 at byte offset {at} (invalid start byte); save the file as UTF-8"


def test_malformed_set_exits_2_naming_the_override(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nconstitution: {DEFAULT}\n")
    for item, expected in (
        (
            "critique.revisions=[1,",
            "error: --set 'critique.revisions=[1,': line 1, column 4: not valid YAML: expected the node content, but found '<stream end>'",
        ),
        ("=3", "error: --set '=3': the key is empty; expected KEY=VALUE, e.g. --set critique.revisions=2"),
        ("nokey", "error: --set 'nokey': expected KEY=VALUE, e.g. --set critique.revisions=2"),
        ("critique.stop=*a", "error: --set 'critique.stop=*a': line 1: YAML alias *a: anchors and aliases are not allowed"),
    ):
        assert _one_error_line(cai("config", "show", cfg, "--set", item)).startswith(expected)


def test_closed_stdout_pipe_exits_quietly(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nconstitution: {DEFAULT}\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    # `config keys` writes more than the 8 kB buffer (print fails); `config show` less (the flush
    # at the end fails). The reader is closed before the command starts: `cai ... | head -0`.
    for args in (["config", "keys"], ["config", "show", str(cfg)]):
        proc = subprocess.Popen([sys.executable, "-m", "cai.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        proc.stdout.close()
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 141, stderr
        assert stderr == ""
