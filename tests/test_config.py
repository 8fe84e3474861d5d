"""Config: typed, strict, errors that name file, key and line; --set overrides; saved resolved."""

import textwrap

import pytest

from cai.config import LocalModel, OpenAIModel, config_help, load_config, save_config
from cai.errors import InputError


@pytest.fixture
def files(tmp_path):
    (tmp_path / "const.yaml").write_text("sl_principles: []\n")
    (tmp_path / "red.txt").write_text("how do i pick a lock\n")
    return tmp_path


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(textwrap.dedent(text))
    return p


GOOD = """\
    run_dir: runs/x
    seed: 3
    constitution: const.yaml
    prompts:
      red_team:
        path: red.txt
    models:
      policy:
        backend: local
        path: some-org/some-model
    critique:
      revisions: 2
"""


def test_good_config_loads_with_defaults_and_paths_relative_to_the_file(files):
    c = load_config(write(files, GOOD))
    assert c.seed == 3 and c.critique.revisions == 2 and c.critique.batch_size == 16
    assert c.constitution == str(files / "const.yaml")
    assert c.prompts.red_team.path == str(files / "red.txt")
    assert isinstance(c.models.policy, LocalModel) and c.models.policy.path == "some-org/some-model"  # hub id kept
    assert c.models.policy.trust_remote_code is False


def test_unknown_key_names_dotted_key_and_line(files):
    p = write(files, GOOD.replace("      revisions: 2", "      revisions: 2\n      revisons: 3"))
    with pytest.raises(InputError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "critique.revisons (line 13): unknown key" in msg


def test_wrong_type_and_missing_key(files):
    p = write(files, GOOD.replace("revisions: 2", "revisions: many").replace("    seed: 3\n", ""))
    with pytest.raises(InputError, match=r"critique\.revisions \(line 11\)"):
        load_config(p)
    p = write(files, GOOD.replace("    run_dir: runs/x\n", ""))
    with pytest.raises(InputError, match="run_dir: required key is missing"):
        load_config(p)


def test_model_spec_errors_name_the_field_inside_the_union(files):
    p = write(files, GOOD.replace("path: some-org/some-model", "pth: some-org/some-model"))
    with pytest.raises(InputError) as e:
        load_config(p)
    assert "models.policy.pth (line 10): unknown key" in str(e.value)
    assert "models.policy.path (line 8): required key is missing" in str(e.value)


def test_openai_spec(files):
    text = GOOD.replace("backend: local\n        path: some-org/some-model", "backend: openai\n        base_url: http://localhost:8000/v1\n        model: m")
    c = load_config(write(files, text))
    assert isinstance(c.models.policy, OpenAIModel) and c.models.policy.api_key_env == "OPENAI_API_KEY"


def test_missing_files_are_named(files):
    with pytest.raises(InputError, match="config file not found"):
        load_config(files / "nope.yaml")
    with pytest.raises(InputError, match=r"prompts\.red_team\.path: file not found: .*missing\.txt"):
        load_config(write(files, GOOD.replace("red.txt", "missing.txt")))
    with pytest.raises(InputError, match="constitution: file not found"):
        load_config(write(files, GOOD.replace("const.yaml", "gone.yaml")))


def test_set_overrides_any_key_and_is_validated(files):
    p = write(files, GOOD)
    c = load_config(p, ["critique.revisions=4", "models.policy.dtype=bfloat16", "critique.stop=['###']"])
    assert c.critique.revisions == 4 and c.models.policy.dtype == "bfloat16" and c.critique.stop == ["###"]
    with pytest.raises(InputError, match=r"critique\.revisions \(from --set\)"):
        load_config(p, ["critique.revisions=0"])
    with pytest.raises(InputError, match="expected KEY=VALUE"):
        load_config(p, ["critique.revisions"])


def test_invalid_yaml_and_non_mapping(files):
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(write(files, "run_dir: [unclosed\n"))
    with pytest.raises(InputError, match="top level must be a mapping"):
        load_config(write(files, "- a\n- b\n"))


def test_resolved_config_round_trips_and_holds_no_secret(files, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    text = GOOD.replace(
        "backend: local\n        path: some-org/some-model", "backend: openai\n        base_url: http://x/v1\n        model: m\n        api_key_env: MY_KEY"
    )
    c = load_config(write(files, text))
    save_config(c, files / "out" / "config.yaml")
    saved = (files / "out" / "config.yaml").read_text()
    assert "sk-secret-123" not in saved and "MY_KEY" in saved
    assert load_config(files / "out" / "config.yaml") == c


def test_every_field_has_help_type_default_and_range():
    rows = config_help()
    keys = {k: (t, d, h) for k, t, d, h in rows}
    assert {
        "run_dir",
        "seed",
        "constitution",
        "prompts.red_team",
        "models.policy",
        "critique.revisions",
        "critique.max_new_tokens",
        "critique.batch_size",
    } <= keys.keys()
    # nested keys too: model specs (each backend's), prompt sources, LoRA
    assert {
        "models.policy.base_url",
        "models.policy.prefix_cache",
        "models.policy.dtype",
        "prompts.red_team.field",
        "sft.lora.r",
        "ppo.lora.alpha",
    } <= keys.keys()
    assert all(h for _, _, h in keys.values()), [k for k, (_, _, h) in keys.items() if not h]
    assert keys["critique.revisions"][:2] == ("int", "1") and "Range: >= 1, <= 16." in keys["critique.revisions"][2]
    assert keys["models.policy.base_url"][2].startswith("[openai]") and keys["models.policy.dtype"][2].startswith("[local]")
    assert "Speed only" in keys["critique.batch_size"][2] and "Speed only" not in keys["sft.batch_size"][2]
    assert keys["sample.temperatures"][:2] == ("list[float]", "[1.0]") and keys["run_dir"][:2] == ("str", "(required)")


# ---------------------------------------------------------------- hostile or broken files (cai.yamlio)


def test_alias_bomb_is_rejected_at_its_first_anchor_before_anything_is_expanded(files):
    from bombs import CONFIG_HEAD, laughs

    # The syntax error after the bomb is never reached: reading stops at the first anchor (line 3).
    p = files / "run.yaml"
    p.write_text(CONFIG_HEAD + laughs(4) + "seed: [never read\n")
    with pytest.raises(InputError) as e:
        load_config(p)
    assert str(e.value) == (
        f"{p}: line 3: YAML anchor &l0: anchors and aliases are not allowed in cai files "
        "(nested aliases can expand a small file into gigabytes); write the value out in full"
    )
    p.write_text(CONFIG_HEAD + "seed: *undefined\n")
    with pytest.raises(InputError, match=r"run\.yaml: line 3: YAML alias \*undefined: anchors and aliases are not allowed"):
        load_config(p)


def test_duplicate_keys_name_both_lines(files):
    p = write(files, GOOD + "    seed: 4\n")
    with pytest.raises(InputError) as e:
        load_config(p)
    assert str(e.value) == f"{p}: seed: duplicate key (lines 2 and 13)"
    p = write(files, GOOD.replace("      revisions: 2", "      revisions: 2\n      batch_size: 4\n      revisions: 3"))
    with pytest.raises(InputError) as e:
        load_config(p)
    assert str(e.value) == f"{p}: critique.revisions: duplicate key (lines 12 and 14)"


def test_non_utf8_config_names_the_line_and_byte_offset(files):
    p = files / "run.yaml"
    text = textwrap.dedent(GOOD).encode()
    at = text.index(b"runs/x") + 4
    p.write_bytes(text[:at] + b"\xe9" + text[at:])  # "runs\xe9/x": Latin-1, not UTF-8
    with pytest.raises(InputError) as e:
        load_config(p)
    assert str(e.value) == f"{p}: line 1: not UTF-8 text: byte 0xe9 at byte offset {at} (invalid continuation byte); save the file as UTF-8"


@pytest.mark.parametrize(
    "item, message",
    [
        ("critique.revisions=[1,", r"^--set 'critique.revisions=\[1,': line 1, column 4: not valid YAML: expected the node content, but found '<stream end>'$"),
        ("critique.stop={a: 1", r"^--set 'critique.stop=\{a: 1': line 1, column 6: not valid YAML: expected ',' or '}', but got '<stream end>'"),
        ("=3", r"^--set '=3': the key is empty; expected KEY=VALUE"),
        ("nokey", r"^--set 'nokey': expected KEY=VALUE, e.g. --set critique.revisions=2$"),
        ("critique..revisions=3", r"^--set 'critique..revisions=3': the key 'critique..revisions' has an empty part between dots$"),
        ("critique.stop=&a [*a]", r"^--set 'critique.stop=&a \[\*a\]': line 1: YAML anchor &a: anchors and aliases are not allowed"),
        (
            "models.policy={backend: local, backend: openai}",
            r"^--set 'models.policy=\{backend: local, backend: openai\}': backend: duplicate key \(line 1, columns 2 and 18\)$",
        ),
    ],
)
def test_malformed_set_names_the_override(files, item, message):
    with pytest.raises(InputError, match=message):
        load_config(write(files, GOOD), [item])


def test_sections_of_the_wrong_type_are_reported_with_their_line(files):
    # _resolve_paths walks these sections before validation; a list there was an AttributeError.
    for section, line in (("prompts", 4), ("models", 7)):
        text = textwrap.dedent(GOOD)
        start = text.index(f"{section}:")
        end = text.index("\n", text.index("path:", start))  # the section's first path line
        p = files / "run.yaml"
        p.write_text(text[:start] + f"{section}: [a, b]" + text[end:])
        with pytest.raises(InputError, match=rf"  {section} \(line {line}\): Input should be a valid dictionary"):
            load_config(p)


def test_list_items_are_named_with_their_position_and_line(files):
    p = write(files, GOOD + "      stop: ['###', 3]\n")
    with pytest.raises(InputError) as e:
        load_config(p)
    assert "  critique.stop[1] (line 13): Input should be a valid string" in str(e.value)
