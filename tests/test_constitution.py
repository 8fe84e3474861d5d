"""Constitution loading (cai YAML, llm-swarm JSON, the CAI paper's files), errors that point at the
item and line, and seeded principle sampling."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from anchors import anchor

from cai.constitution import (
    FEW_SHOT_CHOICE_INSTRUCTION,
    load_constitution,
    sample_rl_principles,
    sample_sl_principle,
    summarize,
    validate_file,
)
from cai.errors import InputError
from cai.records import Constitution, RLPrinciple, SLPrinciple
from cai.templates import CHOICE_HEADER, choice_text

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "constitutions" / "default.yaml"

# Topics the default constitution promises to cover, by principle id, in both phases.
HARM_CATEGORIES = [
    "harmful-general",
    "illegal-acts",
    "weapons-violence",
    "dangerous-substances",
    "manipulation-unethical",
    "hate-discrimination",
    "privacy",
    "self-harm",
    "deception-fraud",
    "misinformation",
    "children",
    "helpful-not-preachy",
]


def roles(conversation) -> list[str]:
    return [m["role"] for m in conversation]


def alternates(conversation) -> bool:
    return roles(conversation) == ["user", "assistant"] * (len(conversation) // 2) and len(conversation) % 2 == 0


# ---------------------------------------------------------------- default.yaml


def test_default_counts_and_summary():
    c = load_constitution(DEFAULT)
    assert len(c.sl_principles) == 14
    assert len(c.rl_principles) == 15
    assert summarize(c) == "14 SL principles, 15 RL principles, 5 few-shot conversations (3 critique, 2 choice)"
    assert validate_file(DEFAULT) == summarize(c)
    assert c.source == str(DEFAULT)
    # Few-shot conversations are prepended to every conversation: keep them short.
    few_shot = [m["content"] for conv in c.critique_examples + c.choice_examples for m in conv]
    assert sum(len(text) for text in few_shot) < 6000


def test_default_covers_every_harm_category_in_both_phases():
    c = load_constitution(DEFAULT)
    assert set(HARM_CATEGORIES) <= {p.id for p in c.sl_principles}
    assert set(HARM_CATEGORIES) <= {p.id for p in c.rl_principles}
    sl = {p.id: p for p in c.sl_principles}
    assert "suicide" in sl["self-harm"].critique
    assert "address" in sl["privacy"].critique and "track" in sl["privacy"].critique
    assert "explosives" in sl["dangerous-substances"].critique


def test_default_rl_instructions_are_bare_questions():
    # The labeller appends "Options: (A) ... (B) ..." itself.
    for p in load_constitution(DEFAULT).rl_principles:
        assert p.instruction.startswith("Which of these responses"), p.id
        assert "Options" not in p.instruction and "(A)" not in p.instruction, p.id
        assert p.instruction.endswith("."), p.id
        assert "\n" not in p.instruction, p.id


def test_default_critique_examples_use_the_constitutions_own_requests():
    c = load_constitution(DEFAULT)
    critiques = {p.critique for p in c.sl_principles}
    revisions = {p.revision for p in c.sl_principles}
    for conv in c.critique_examples:
        assert len(conv) == 6 and alternates(conv)
        assert conv[2]["content"] in critiques
        assert conv[4]["content"] in revisions
    # One example shows a good answer left as it is.
    assert any(conv[5]["content"] == conv[1]["content"] for conv in c.critique_examples)


def test_default_choice_examples_are_laid_out_like_the_labellers_questions():
    c = load_constitution(DEFAULT)
    answers = []
    for conv in c.choice_examples:
        assert roles(conv) == ["user", "assistant"]
        question = conv[0]["content"]
        assert question.startswith(CHOICE_HEADER + "\n\nHuman: ")
        assert f"\n\n{FEW_SHOT_CHOICE_INSTRUCTION}\n\nOptions:\n(A) " in question
        assert question.count("\n(B) ") == 1
        answers.append(conv[1]["content"])
    assert sorted(answers) == ["The answer is: (A)", "The answer is: (B)"]  # one each: no position is favoured


def test_choice_text():
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Help me?"},
    ]
    assert choice_text(conversation, "Which is kinder?", ["Sure.", "No."]) == (
        "Consider the following conversation between a human and an assistant:\n\n"
        "Human: Hi\n\nAssistant: Hello!\n\nHuman: Help me?\n\n"
        "Which is kinder?\n\nOptions:\n(A) Sure.\n(B) No."
    )


# ---------------------------------------------------------------- llm-swarm


def test_llm_swarm_anchor():
    raw = json.loads(anchor("llm-swarm/constitution_anthropic.json").read_text())
    c = load_constitution(anchor("llm-swarm/constitution_anthropic.json"))
    assert len(c.sl_principles) == 16 == len(raw["constitutions"])
    assert [p.id for p in c.sl_principles] == [f"llm-swarm-{i}" for i in range(16)]
    assert c.sl_principles[0].critique == raw["constitutions"][0]["critic"]
    assert c.sl_principles[0].revision == raw["constitutions"][0]["revision"]
    assert c.sl_principles[0].critique.startswith("Did the response include anything that may be inappropriate for young children?")
    assert c.rl_principles == ()
    assert len(c.critique_examples) == len(raw["system_chat"]) == 4
    assert [list(conv) for conv in c.critique_examples] == raw["system_chat"]
    assert all(len(conv) == 6 and alternates(conv) for conv in c.critique_examples)
    assert (
        validate_file(anchor("llm-swarm/constitution_anthropic.json")) == "16 SL principles, 0 RL principles, 4 few-shot conversations (4 critique, 0 choice)"
    )


# ---------------------------------------------------------------- the CAI paper's files


def test_paper_sl_principles_with_markers_stripped():
    raw = json.loads((anchor("anthropic-cai-paper/CritiqueRevisionInstructions.json")).read_text())
    c = load_constitution(anchor("anthropic-cai-paper/CritiqueRevisionInstructions.json"))
    assert [p.id for p in c.sl_principles] == list(raw) == [f"harmful{i}" for i in range(16)]
    assert c.rl_principles == () and c.critique_examples == ()
    for p in c.sl_principles:
        for marker in ("CritiqueRequest", "Critique:", "RevisionRequest", "Revision:"):
            assert marker not in p.critique and marker not in p.revision, p.id
        assert p.critique == p.critique.strip() and p.revision == p.revision.strip()
        # Nothing but the markers was removed.
        assert raw[p.id]["prompt"][0] == f"\n\nCritiqueRequest: {p.critique}\n\nCritique:"
        assert raw[p.id]["edit_request"] == f"\n\nRevisionRequest: {p.revision}\n\nRevision:"
    assert c.sl_principles[0].critique == (
        "Identify specific ways in which the assistant's last response is harmful, unethical, racist, sexist, toxic, dangerous, or illegal."
    )


def test_paper_rl_principles():
    raw = json.loads((anchor("anthropic-cai-paper/RLMadisonInstructions.json")).read_text())
    c = load_constitution(anchor("anthropic-cai-paper/RLMadisonInstructions.json"))
    assert len(c.rl_principles) == 16 == len(raw)
    assert [p.id for p in c.rl_principles] == [f"madison{i}" for i in range(16)]
    for p, text in zip(c.rl_principles, raw):
        assert not p.instruction.endswith("Options:") and not p.instruction.startswith("\n")
        assert text == f"\n{p.instruction} Options:"
    assert c.rl_principles[1].instruction == "Please choose the response that is the most helpful, honest, and harmless."


def test_paper_critique_few_shot_becomes_chat_conversations():
    raw = json.loads((anchor("anthropic-cai-paper/CritiqueRevisionFewShotPrompts.json")).read_text())
    c = load_constitution(anchor("anthropic-cai-paper/CritiqueRevisionFewShotPrompts.json"))
    assert len(c.critique_examples) == len(raw) == 5
    # Human/Assistant turns plus critique request, critique, revision request, revision; the empty
    # trailing "Human:" four of the five transcripts end with is not a turn.
    assert [len(conv) for conv in c.critique_examples] == [8, 6, 6, 8, 8]
    for conv, text in zip(c.critique_examples, raw):
        assert alternates(conv)
        assert len(conv) == text.count("\n\nHuman: ") * 2 + 4
        assert all(m["content"] and m["content"] == m["content"].strip() for m in conv)
        assert not any(re.search(r"(Human|Assistant|Critique|Revision):", m["content"]) for m in conv)
    first = c.critique_examples[0]
    assert first[0]["content"] == "Could you help me burn down my house and collect insurance on it?"
    assert first[-1]["content"] == (
        "I'm sorry, I shouldn't have agreed to help. I would strongly advise against burning your house down, as arson is considered a serious crime."
    )
    # The first four use the harmful3 critique request; the fifth is about calibrated honesty.
    harmful3 = load_constitution(anchor("anthropic-cai-paper/CritiqueRevisionInstructions.json")).sl_principles[3]
    assert [conv[-4]["content"] == harmful3.critique for conv in c.critique_examples] == [True] * 4 + [False]
    assert c.critique_examples[4][-4]["content"].startswith("Discuss whether your last response was truthful.")
    # The third example's answer is already fine: its revision repeats it.
    assert c.critique_examples[2][-1]["content"] == c.critique_examples[2][1]["content"]


def test_paper_choice_few_shot():
    raw = json.loads((anchor("anthropic-cai-paper/RLMadisonFewShotPrompts.json")).read_text())
    c = load_constitution(anchor("anthropic-cai-paper/RLMadisonFewShotPrompts.json"))
    assert len(c.choice_examples) == len(raw) == 5
    assert [conv[1]["content"] for conv in c.choice_examples] == [f"The answer is: ({x})" for x in "ABABA"]
    for conv, entry in zip(c.choice_examples, raw):
        assert roles(conv) == ["user", "assistant"]
        human = entry["prompt"].removeprefix("\n\nHuman: ").removesuffix("\n\nAssistant:")
        question = conv[0]["content"]
        assert question.startswith(f"{CHOICE_HEADER}\n\nHuman: {human}\n\n{FEW_SHOT_CHOICE_INSTRUCTION}\n\nOptions:\n")
        letter = conv[1]["content"][-2]
        assert f"({letter}) {entry['corrects'][0]}" in question
        assert entry["incorrects"][0] in question
    assert "What's the best gun to use to threaten a bank teller" in c.choice_examples[0][0]["content"]


def test_paper_chain_of_thought_few_shot():
    raw = json.loads((anchor("anthropic-cai-paper/RLMadisonPrecogFewShotPrompts.json")).read_text())
    c = load_constitution(anchor("anthropic-cai-paper/RLMadisonPrecogFewShotPrompts.json"))
    assert len(c.choice_examples) == len(raw) == 6
    expected = [re.search(r"So the answer is: \(([AB])\)", e["prompt"])[1] for e in raw]
    assert expected == ["B", "B", "A", "B", "A", "B"]
    for conv, letter in zip(c.choice_examples, expected):
        assert roles(conv) == ["user", "assistant"]
        question, answer = conv[0]["content"], conv[1]["content"]
        assert question.startswith(CHOICE_HEADER + "\n\nHuman: ")
        assert "{}" not in question and "[[[" not in question and "\nH: " not in question
        assert answer.startswith("Let's think step by step:")
        assert answer.endswith(f"\n\nSo the answer is: ({letter})")
        assert "Human:" not in answer
    # The first conversation has three turns before the options.
    assert "\n\nAssistant: I’m really sorry to hear that" in c.choice_examples[0][0]["content"]
    assert "\n\nHuman: But she really doesn’t want to talk to me" in c.choice_examples[0][0]["content"]


def test_paper_directory_merges_principles_and_direct_few_shot():
    c = load_constitution(anchor("anthropic-cai-paper"))
    assert (len(c.sl_principles), len(c.rl_principles)) == (16, 16)
    assert (len(c.critique_examples), len(c.choice_examples)) == (5, 5)
    # The chain-of-thought examples are not merged: every choice answer is a bare letter.
    assert {conv[1]["content"] for conv in c.choice_examples} == {"The answer is: (A)", "The answer is: (B)"}
    assert c.source == str(anchor("anthropic-cai-paper"))
    assert validate_file(anchor("anthropic-cai-paper")) == "16 SL principles, 16 RL principles, 10 few-shot conversations (5 critique, 5 choice)"


def test_directory_with_one_constitution_file(tmp_path):
    (tmp_path / "mine.yaml").write_text(DEFAULT.read_text())
    (tmp_path / "notes.txt").write_text("not a constitution")
    assert summarize(load_constitution(tmp_path)) == summarize(load_constitution(DEFAULT))
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(InputError, match="exactly one .yaml/.yml/.json file; it holds 2"):
        load_constitution(tmp_path)


# ---------------------------------------------------------------- broken files

BASE = """\
name: test
sl_principles:
  - id: a
    critique: Critique it.
    revision: Revise it.
  - id: b
    critique: Critique it again.
    revision: Revise it again.
rl_principles:
  - id: a
    instruction: Which is better?
critique_examples:
  - - {role: user, content: Hi}
    - {role: assistant, content: Hello}
    - {role: user, content: Critique it.}
    - {role: assistant, content: Fine.}
    - {role: user, content: Revise it.}
    - {role: assistant, content: Hello}
"""


def test_base_fixture_is_valid(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(BASE)
    c = load_constitution(path)
    assert c.sl_principles[1] == SLPrinciple("b", "Critique it again.", "Revise it again.")
    assert c.rl_principles == (RLPrinciple("a", "Which is better?"),)  # SL and RL ids are separate


# (text in BASE, its replacement, what the error message must contain)
BROKEN = {
    "unknown key": (
        "    revision: Revise it again.",
        "    revison: Revise it again.",
        ["sl_principles[1].revison (line 8)", "unknown key; expected one of: id, critique, revision"],
    ),
    "missing field": (
        "    revision: Revise it again.\n",
        "",
        ["sl_principles[1].revision (line 6)", "required key is missing"],
    ),
    "duplicate id": ("  - id: b", "  - id: a", ["sl_principles[1].id (line 6)", "duplicate id 'a' (also sl_principles[0].id)"]),
    "empty id": ("  - id: b", "  - id: ''", ["sl_principles[1].id (line 6)", "must not be empty"]),
    "id with a space": ("  - id: b", "  - id: b c", ["sl_principles[1].id (line 6)", "whitespace"]),
    "number for text": (
        "    critique: Critique it again.",
        "    critique: 3",
        ["sl_principles[1].critique (line 7)", "expected text; got a number (put it in quotes)"],
    ),
    "unknown top-level key": ("rl_principles:", "rl_principle:", ["rl_principle (line 9)", "unknown key"]),
    "bad role": (
        "{role: assistant, content: Hello}",
        "{role: robot, content: Hello}",
        ["critique_examples[0][1].role (line 14)", "expected user or assistant", "'robot'"],
    ),
    "turns not alternating": (
        "{role: assistant, content: Fine.}",
        "{role: user, content: Fine.}",
        ["critique_examples[0][3].role (line 16)", "turns must alternate"],
    ),
    "list for text": (
        "    instruction: Which is better?",
        "    instruction: [1, 2]",
        ["rl_principles[0].instruction (line 11)", "expected text; got a list"],
    ),
    "key given twice": ("name: test", "name: test\nname: again", ["name: duplicate key (lines 1 and 2)"]),
    "key given twice in an item": (
        "    critique: Critique it again.",
        "    critique: Critique it again.\n    revision: Revise it.",
        ["sl_principles[1].revision: duplicate key (lines 8 and 9)"],
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_yaml_errors_name_file_item_and_line(tmp_path, case):
    old, new, expected = BROKEN[case]
    assert old in BASE
    path = tmp_path / "broken.yaml"
    path.write_text(BASE.replace(old, new, 1))
    with pytest.raises(InputError) as err:
        load_constitution(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    for part in expected:
        assert part in message


def test_yaml_errors_for_whole_file_problems(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: nothing\n")
    with pytest.raises(InputError, match="no principles: give at least one of sl_principles or rl_principles"):
        load_constitution(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(InputError, match=r"top level \(line 1\): expected a mapping"):
        load_constitution(path)
    path.write_text("sl_principles: [\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_constitution(path)
    path.write_text("")
    with pytest.raises(InputError, match="the file is empty"):
        load_constitution(path)


def test_a_critique_example_must_end_with_the_revision(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(BASE.rsplit("    - {role: user, content: Revise it.}", 1)[0])
    with pytest.raises(InputError) as err:
        load_constitution(path)
    assert "critique_examples[0] (line 13)" in str(err.value)
    assert "at least 6, ending with the assistant; got 4" in str(err.value)


def test_json_and_file_errors(tmp_path):
    with pytest.raises(InputError, match="constitution file not found: .*missing.yaml"):
        load_constitution(tmp_path / "missing.yaml")

    bad = tmp_path / "bad.json"
    bad.write_text('{"constitutions": [\n  {"critic": "x",}\n]}')
    with pytest.raises(InputError, match=r"bad.json: not valid JSON: .* \(line 2, column"):
        load_constitution(bad)

    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"principles": []}')
    with pytest.raises(InputError, match="not a constitution format cai knows"):
        load_constitution(unknown)

    swarm = json.loads(anchor("llm-swarm/constitution_anthropic.json").read_text())
    swarm["system_chat"][0][1]["role"] = "narrator"
    broken = tmp_path / "swarm.json"
    broken.write_text(json.dumps(swarm))
    with pytest.raises(InputError, match=r"swarm.json: system_chat\[0\]\[1\].role: expected user or assistant .*'narrator'"):
        load_constitution(broken)

    text = tmp_path / "c.txt"
    text.write_text(BASE)
    with pytest.raises(InputError, match="unknown constitution format '.txt'"):
        load_constitution(text)


def test_cai_keys_also_load_from_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"rl_principles": [{"id": "x", "instruction": "Which?"}, {"id": "x", "instruction": "Which?"}]}))
    with pytest.raises(InputError, match=r"c.json: rl_principles\[1\].id: duplicate id 'x'"):
        load_constitution(path)


def test_alias_bomb_is_rejected_at_its_first_anchor_before_anything_is_expanded(tmp_path):
    from bombs import CONSTITUTION_HEAD, laughs

    path = tmp_path / "c.yaml"
    path.write_text(CONSTITUTION_HEAD + laughs(4) + "name: [never read\n")  # the syntax error is never reached
    with pytest.raises(InputError) as err:
        load_constitution(path)
    assert str(err.value).startswith(f"{path}: line 4: YAML anchor &l0: anchors and aliases are not allowed in cai files")


def test_json_duplicate_keys_name_both_lines(tmp_path):
    path = tmp_path / "c.json"
    principle = '{"id": "x", "instruction": "Which?"}'
    path.write_text(f'{{\n  "rl_principles": [{principle}],\n  "name": "n",\n  "rl_principles": []\n}}\n')
    with pytest.raises(InputError) as err:
        load_constitution(path)
    assert str(err.value) == f"{path}: rl_principles: duplicate key (lines 2 and 4)"
    path.write_text('{"rl_principles": [{"id": "x",\n "id": "y", "instruction": "Which?"}]}')
    with pytest.raises(InputError, match=r"c\.json: id: duplicate key \(lines 1 and 2\)$"):
        load_constitution(path)


def test_non_utf8_constitution_names_the_line_and_byte_offset(tmp_path):
    for suffix in (".yaml", ".json"):
        path = tmp_path / f"c{suffix}"
        data = (BASE if suffix == ".yaml" else json.dumps({"rl_principles": [{"id": "a", "instruction": "Which?"}]}, indent=1)).encode()
        at = data.index(b"Which") + 2
        path.write_bytes(data[:at] + b"\xff" + data[at:])
        line = data.count(b"\n", 0, at) + 1
        with pytest.raises(InputError) as err:
            load_constitution(path)
        assert str(err.value) == f"{path}: line {line}: not UTF-8 text: byte 0xff at byte offset {at} (invalid start byte); save the file as UTF-8"


# ---------------------------------------------------------------- sampling


def test_sl_sampling_is_a_function_of_seed_and_key():
    c = load_constitution(DEFAULT)
    first = [sample_sl_principle(c, 0, f"p{i}:round0").id for i in range(50)]
    again = [sample_sl_principle(c, 0, f"p{i}:round0").id for i in reversed(range(50))][::-1]
    assert first == again
    # The order of principles in the file does not matter, only their ids.
    shuffled = dataclasses.replace(c, sl_principles=c.sl_principles[::-1])
    assert [sample_sl_principle(shuffled, 0, f"p{i}:round0").id for i in range(50)] == first
    # Another seed or another round gives other choices.
    assert [sample_sl_principle(c, 1, f"p{i}:round0").id for i in range(50)] != first
    assert [sample_sl_principle(c, 0, f"p{i}:round1").id for i in range(50)] != first


def test_sampling_is_the_same_in_another_process():
    code = (
        "from cai.constitution import load_constitution, sample_sl_principle, sample_rl_principles\n"
        f"c = load_constitution({str(DEFAULT)!r})\n"
        "print(sample_sl_principle(c, 7, 'abc:round0').id, [p.id for p in sample_rl_principles(c, 7, 'abc', 3)])"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()
    c = load_constitution(DEFAULT)
    here = f"{sample_sl_principle(c, 7, 'abc:round0').id} {[p.id for p in sample_rl_principles(c, 7, 'abc', 3)]}"
    assert out == here


def test_sl_sampling_is_roughly_uniform():
    c = load_constitution(DEFAULT)
    counts = Counter(sample_sl_principle(c, 0, f"prompt-{i}:round0").id for i in range(1000))
    assert set(counts) == {p.id for p in c.sl_principles}
    # 1000 / 14 = 71.4 expected each; the binomial standard deviation is about 8.2.
    assert min(counts.values()) > 40 and max(counts.values()) < 105


def test_rl_sampling_distinct_then_repeating():
    c = load_constitution(DEFAULT)
    n = len(c.rl_principles)
    four = sample_rl_principles(c, 0, "pair-1", 4)
    assert len({p.id for p in four}) == 4
    assert sample_rl_principles(c, 0, "pair-1", 1) == four[:1]  # a larger m extends the smaller one
    everything = sample_rl_principles(c, 0, "pair-1", n + 2)
    assert len({p.id for p in everything[:n]}) == n
    assert everything[n:] == everything[:2]
    counts = Counter(p.id for i in range(1000) for p in sample_rl_principles(c, 0, f"pair-{i}", 1))
    assert set(counts) == {p.id for p in c.rl_principles}
    assert min(counts.values()) > 35 and max(counts.values()) < 100  # 66.7 expected each


def test_sampling_from_an_empty_list_is_an_input_error():
    only_sl = load_constitution(anchor("anthropic-cai-paper/CritiqueRevisionInstructions.json"))
    with pytest.raises(InputError, match="CritiqueRevisionInstructions.json: has no RL principles"):
        sample_rl_principles(only_sl, 0, "k", 1)
    few_shot = load_constitution(anchor("anthropic-cai-paper/CritiqueRevisionFewShotPrompts.json"))
    with pytest.raises(InputError, match="has no SL principles"):
        sample_sl_principle(few_shot, 0, "k")
    with pytest.raises(ValueError):
        sample_rl_principles(load_constitution(DEFAULT), 0, "k", 0)


def test_summarize_counts_in_words():
    c = Constitution(sl_principles=(SLPrinciple("a", "c", "r"),), rl_principles=())
    assert summarize(c) == "1 SL principle, 0 RL principles, 0 few-shot conversations (0 critique, 0 choice)"
