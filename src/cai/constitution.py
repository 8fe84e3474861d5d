"""Constitutions: the principles that steer critique, revision and AI feedback, plus few-shot examples.

    cai constitution validate constitutions/default.yaml    # -> validate_file(path)

`load_constitution(path)` reads three formats, told apart by extension and content:

1. cai YAML (`.yaml`/`.yml`; the same keys also work in a `.json` file). The default is
   `constitutions/default.yaml`:

       name: cai-default              # optional; for people reading the file
       sl_principles:                 # supervised phase: one is sampled per revision round
         - id: harmful-general        # unique within sl_principles, no whitespace
           critique: "..."            # critique request: a user turn after the response
           revision: "..."            # revision request: a user turn after the critique
       rl_principles:                 # feedback phase: sampled per labelled pair
         - id: harmful-general        # unique within rl_principles
           instruction: "..."         # the multiple-choice question; the labeller adds the options
       critique_examples:             # few-shot, replayed before every critique conversation
         - - {role: user, content: "..."}        # a (red-team) request
           - {role: assistant, content: "..."}   # a response
           - {role: user, content: "..."}        # a critique request
           - {role: assistant, content: "..."}   # the critique
           - {role: user, content: "..."}        # a revision request
           - {role: assistant, content: "..."}   # the revision
       choice_examples:               # few-shot, replayed before every preference question
         - - {role: user, content: "..."}        # a question laid out by cai.templates.choice_text
           - {role: assistant, content: "The answer is: (B)"}
       topics: [theft, violence, ...] # optional: harm topics that steer `cai redteam`'s generated prompts

   Every key is optional except that at least one principle must be given. Unknown keys, missing
   fields, empty text, duplicate ids, roles other than user/assistant and conversations that do not
   alternate user, assistant, ..., assistant are InputErrors naming the file, the item
   (`sl_principles[3].revision`) and its line. The file is read by `cai.yamlio`'s rules: UTF-8,
   no anchors or aliases, no duplicate keys (in the JSON formats too).

2. llm-swarm JSON (`{"constitutions": [{"critic", "revision"}, ...], "system_chat": [[messages], ...]}`,
   huggingface/llm-swarm examples/constitutional-ai): each pair becomes SL principle `llm-swarm-<i>`,
   each system_chat conversation a critique example. The format has no RL principles.

3. The CAI paper's files (anthropics/ConstitutionalHarmlessnessPaper), one at a time or a directory:
     CritiqueRevisionInstructions.json    -> SL principles, ids as in the file (harmful0 ... harmful15)
     RLMadisonInstructions.json           -> RL principles madison0 ... madison15 (list positions)
     CritiqueRevisionFewShotPrompts.json  -> critique examples (raw Human:/Assistant: transcripts)
     RLMadisonFewShotPrompts.json         -> choice examples
     RLMadisonPrecogFewShotPrompts.json   -> chain-of-thought choice examples (answer after reasoning)
   A file gives what it holds and nothing else, so a few-shot file alone has no principles (sampling
   from it raises). A directory merges the first four files, whichever are present; the
   chain-of-thought examples are left out of the merge because their answers come after a paragraph
   of reasoning, while the labeller scores "(A)"/"(B)" as the very next tokens. Load that file by
   itself for a chain-of-thought labeller. A directory without the paper's files must hold exactly
   one .yaml/.yml/.json file, which is loaded.

Sampling is seeded per prompt and independent of process and batch order: see `sample_sl_principle`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from cai.errors import InputError
from cai.records import Constitution, Message, RLPrinciple, SLPrinciple, assistant, user
from cai.templates import choice_answer, choice_text
from cai.yamlio import load_json, load_yaml

# A critique example holds at least request, response, critique request, critique, revision
# request and revision; a choice example at least the question and its answer.
CRITIQUE_EXAMPLE_MIN_TURNS = 6
CHOICE_EXAMPLE_MIN_TURNS = 2

# The paper's few-shot choice examples carry no instruction of their own (the Precog ones leave a
# "{}" slot for it), but a choice conversation is fixed text, so they get this one.
FEW_SHOT_CHOICE_INSTRUCTION = "Which of these responses is more helpful, honest and harmless? Choose the better response."

PAPER_FILES = (
    "CritiqueRevisionInstructions.json",
    "RLMadisonInstructions.json",
    "CritiqueRevisionFewShotPrompts.json",
    "RLMadisonFewShotPrompts.json",
)


# ---------------------------------------------------------------- public API


def load_constitution(path: str | Path) -> Constitution:
    """Read a constitution in any of the formats above. Raises InputError naming file, item and line."""
    path = Path(path)
    if path.is_dir():
        return _load_directory(path)
    if not path.is_file():
        raise InputError(f"constitution file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        data, lines = _read_yaml(path)
        return _from_cai(_Source(path, lines), data)
    if suffix == ".json":
        return _from_json(_Source(path), _read_json(path))
    raise InputError(
        f"{path}: unknown constitution format {suffix or '(no extension)'!r}: expected .yaml/.yml (cai), "
        ".json (cai, llm-swarm or the CAI paper's files) or a directory of the paper's files"
    )


def validate_file(path: str | Path) -> str:
    """Load a constitution and return its one-line summary (for `cai constitution validate`)."""
    return summarize(load_constitution(path))


def summarize(constitution: Constitution) -> str:
    """e.g. "16 SL principles, 16 RL principles, 7 few-shot conversations (5 critique, 2 choice)"."""
    n_critique, n_choice = len(constitution.critique_examples), len(constitution.choice_examples)
    return (
        f"{_count(len(constitution.sl_principles), 'SL principle')}, "
        f"{_count(len(constitution.rl_principles), 'RL principle')}, "
        f"{_count(n_critique + n_choice, 'few-shot conversation')} ({n_critique} critique, {n_choice} choice)"
    )


def sample_sl_principle(constitution: Constitution, seed: int, key: str) -> SLPrinciple:
    """The SL principle for one critique round, e.g. key=f"{prompt_id}:round{r}".

    Every principle gets a score from sha256(seed, key, id) and the lowest wins. Python's hash() is
    salted per process, so it would give another principle on a resumed run; this gives the same
    one in any process and batch order, and does not change if the file's principles are reordered.
    """
    if not constitution.sl_principles:
        raise InputError(f"{constitution.source or 'the constitution'}: has no SL principles to sample from")
    return min(constitution.sl_principles, key=lambda p: _score(seed, key, "sl", p.id))


def sample_rl_principles(constitution: Constitution, seed: int, key: str, m: int) -> list[RLPrinciple]:
    """m RL principles for one labelled pair, distinct while m <= their number (then they repeat).

    Same stable scoring as `sample_sl_principle`; the m lowest scores are a uniform random subset.
    """
    if m < 1:
        raise ValueError(f"m must be at least 1, got {m}")
    if not constitution.rl_principles:
        raise InputError(f"{constitution.source or 'the constitution'}: has no RL principles to sample from")
    ranked = sorted(constitution.rl_principles, key=lambda p: _score(seed, key, "rl", p.id))
    return [ranked[i % len(ranked)] for i in range(m)]


# ---------------------------------------------------------------- reading files


class _Source:
    """The file being read, and the line of each item in it (YAML only), so errors can point there."""

    def __init__(self, path: Path, lines: dict[str, int] | None = None):
        self.path = path
        self.lines = lines or {}

    def fail(self, item: str, problem: str) -> NoReturn:
        line = self._line(item)
        where = item or ("top level" if line else "")
        if line:
            where += f" (line {line})"
        raise InputError(f"{self.path}: {where}: {problem}" if where else f"{self.path}: {problem}")

    def _line(self, item: str) -> int | None:
        # A missing key has no line of its own: use the nearest enclosing item's.
        while item and item not in self.lines:
            parent = re.sub(r"(\.[^.\[\]]*|\[\d+\])$", "", item)
            item = parent if parent != item else ""
        return self.lines.get(item)


def _read_json(path: Path) -> Any:
    return load_json(path)  # bad bytes, bad syntax and duplicate keys are InputErrors with lines


def _read_yaml(path: Path) -> tuple[Any, dict[str, int]]:
    """Plain data plus {item: 1-based line} ("sl_principles[3].id"); the rules are cai.yamlio's:
    no anchors or aliases, no duplicate keys, UTF-8 only."""
    data, lines = load_yaml(path)
    if data is None:
        raise InputError(f"{path}: the file is empty")
    return data, lines


def _load_directory(path: Path) -> Constitution:
    paper = [path / name for name in PAPER_FILES if (path / name).is_file()]
    if paper:
        parts = [load_constitution(p) for p in paper]
        return Constitution(
            sl_principles=tuple(p for part in parts for p in part.sl_principles),
            rl_principles=tuple(p for part in parts for p in part.rl_principles),
            critique_examples=tuple(c for part in parts for c in part.critique_examples),
            choice_examples=tuple(c for part in parts for c in part.choice_examples),
            source=str(path),
        )
    candidates = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in (".yaml", ".yml", ".json"))
    if len(candidates) == 1:
        return load_constitution(candidates[0])
    raise InputError(
        f"{path}: a constitution directory must hold the CAI paper's files ({', '.join(PAPER_FILES)}) "
        f"or exactly one .yaml/.yml/.json file; it holds {len(candidates)}"
    )


def _from_json(src: _Source, data: Any) -> Constitution:
    """Tell the JSON formats apart by their shape, not their file name (files get renamed)."""
    if isinstance(data, dict) and ({"sl_principles", "rl_principles"} & data.keys()):
        return _from_cai(src, data)
    if isinstance(data, dict) and "constitutions" in data:
        return _from_llm_swarm(src, data)
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "edit_request" in v for v in data.values()):
        return Constitution(_paper_sl_principles(src, data), (), source=str(src.path))
    if isinstance(data, list) and data:
        first = data[0]
        if isinstance(first, str) and first.lstrip().startswith("Human:"):
            return Constitution((), (), critique_examples=_paper_critique_examples(src, data), source=str(src.path))
        if isinstance(first, str):
            return Constitution((), _paper_rl_principles(src, data), source=str(src.path))
        if isinstance(first, dict) and "corrects" in first:
            return Constitution((), (), choice_examples=_paper_choice_examples(src, data), source=str(src.path))
        if isinstance(first, dict) and set(first) == {"prompt"}:
            return Constitution((), (), choice_examples=_paper_precog_examples(src, data), source=str(src.path))
    src.fail(
        "",
        "not a constitution format cai knows: expected cai keys (sl_principles, rl_principles, ...), "
        "llm-swarm's {constitutions, system_chat}, or one of the CAI paper's files",
    )


# ---------------------------------------------------------------- checking plain data


def _kind(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "text", bool: "true/false", int: "a number", float: "a number"}
    return "nothing (null)" if value is None else names.get(type(value), type(value).__name__)


def _mapping(src: _Source, value: Any, item: str, required: Sequence[str], optional: Sequence[str] = ()) -> dict:
    allowed = (*required, *optional)
    if not isinstance(value, dict):
        src.fail(item, f"expected a mapping with keys {', '.join(allowed)}; got {_kind(value)}")
    for key in value:
        if key not in allowed:
            src.fail(f"{item}.{key}" if item else key, f"unknown key; expected one of: {', '.join(allowed)}")
    for key in required:
        if key not in value:
            src.fail(f"{item}.{key}" if item else key, "required key is missing")
    return value


def _list(src: _Source, value: Any, item: str) -> list:
    if not isinstance(value, list):
        src.fail(item, f"expected a list; got {_kind(value)}")
    return value


def _text(src: _Source, value: Any, item: str) -> str:
    if not isinstance(value, str):
        # YAML reads yes/no/on/off as true/false and 1.0 as a number: quoting keeps them text.
        hint = " (put it in quotes)" if isinstance(value, (bool, int, float)) else ""
        src.fail(item, f"expected text; got {_kind(value)}{hint}")
    if not value.strip():
        src.fail(item, "must not be empty")
    return value


def _id(src: _Source, value: Any, item: str, seen: dict[str, str]) -> str:
    """Ids name principles in every record a run writes, so they are unique and free of spaces."""
    value = _text(src, value, item)
    if re.search(r"\s", value):
        src.fail(item, f"ids may not contain whitespace: {value!r}")
    if value in seen:
        src.fail(item, f"duplicate id {value!r} (also {seen[value]})")
    seen[value] = item
    return value


def _conversation(src: _Source, value: Any, item: str, min_turns: int) -> tuple[Message, ...]:
    """Few-shot conversations are replayed in front of real ones, so they must read like one:
    user and assistant alternating, starting with the user and ending with the assistant."""
    messages = []
    for j, raw in enumerate(_list(src, value, item)):
        where = f"{item}[{j}]"
        raw = _mapping(src, raw, where, required=("role", "content"))
        expected = "user" if j % 2 == 0 else "assistant"
        if raw["role"] not in ("user", "assistant"):
            src.fail(f"{where}.role", f"expected user or assistant (few-shot turns only); got {raw['role']!r}")
        if raw["role"] != expected:
            src.fail(f"{where}.role", f"turns must alternate user, assistant, ...; expected {expected} here")
        messages.append({"role": raw["role"], "content": _text(src, raw["content"], f"{where}.content")})
    if len(messages) < min_turns or len(messages) % 2:
        src.fail(item, f"expected an even number of turns, at least {min_turns}, ending with the assistant; got {len(messages)}")
    return tuple(messages)


def _examples(src: _Source, value: Any, item: str, min_turns: int) -> tuple[tuple[Message, ...], ...]:
    return tuple(_conversation(src, conv, f"{item}[{i}]", min_turns) for i, conv in enumerate(_list(src, value, item)))


# ---------------------------------------------------------------- cai format


def _from_cai(src: _Source, data: Any) -> Constitution:
    keys = ("name", "sl_principles", "rl_principles", "critique_examples", "choice_examples", "topics")
    data = _mapping(src, data, "", required=(), optional=keys)
    if "name" in data:
        _text(src, data["name"], "name")

    sl, seen = [], {}
    for i, raw in enumerate(_list(src, data.get("sl_principles", []), "sl_principles")):
        item = f"sl_principles[{i}]"
        raw = _mapping(src, raw, item, required=("id", "critique", "revision"))
        sl.append(
            SLPrinciple(
                id=_id(src, raw["id"], f"{item}.id", seen),
                critique=_text(src, raw["critique"], f"{item}.critique"),
                revision=_text(src, raw["revision"], f"{item}.revision"),
            )
        )

    rl, seen = [], {}
    for i, raw in enumerate(_list(src, data.get("rl_principles", []), "rl_principles")):
        item = f"rl_principles[{i}]"
        raw = _mapping(src, raw, item, required=("id", "instruction"))
        rl.append(
            RLPrinciple(
                id=_id(src, raw["id"], f"{item}.id", seen),
                instruction=_text(src, raw["instruction"], f"{item}.instruction"),
            )
        )

    if not sl and not rl:
        src.fail("", "no principles: give at least one of sl_principles or rl_principles")
    return Constitution(
        sl_principles=tuple(sl),
        rl_principles=tuple(rl),
        critique_examples=_examples(src, data.get("critique_examples", []), "critique_examples", CRITIQUE_EXAMPLE_MIN_TURNS),
        choice_examples=_examples(src, data.get("choice_examples", []), "choice_examples", CHOICE_EXAMPLE_MIN_TURNS),
        topics=tuple(_text(src, t, f"topics[{i}]") for i, t in enumerate(_list(src, data.get("topics", []), "topics"))),
        source=str(src.path),
    )


# ---------------------------------------------------------------- llm-swarm format


def _from_llm_swarm(src: _Source, data: dict) -> Constitution:
    data = _mapping(src, data, "", required=("constitutions",), optional=("system_chat",))
    sl = []
    for i, raw in enumerate(_list(src, data["constitutions"], "constitutions")):
        item = f"constitutions[{i}]"
        raw = _mapping(src, raw, item, required=("critic", "revision"))
        critique = _text(src, raw["critic"], f"{item}.critic")
        sl.append(SLPrinciple(f"llm-swarm-{i}", critique, _text(src, raw["revision"], f"{item}.revision")))
    if not sl:
        src.fail("constitutions", "no principles: the list is empty")
    return Constitution(
        sl_principles=tuple(sl),
        rl_principles=(),
        critique_examples=_examples(src, data.get("system_chat", []), "system_chat", CRITIQUE_EXAMPLE_MIN_TURNS),
        source=str(src.path),
    )


# ---------------------------------------------------------------- the CAI paper's files


def _unframe(text: str, request_marker: str, answer_marker: str) -> str:
    """The paper writes requests into a raw transcript ("\\n\\nCritiqueRequest: ...\\n\\nCritique:"),
    where the markers say who speaks next. In chat form the request is a user turn and the answer an
    assistant turn, so the markers are stripped and only the request itself is kept."""
    text = text.strip().removeprefix(f"{request_marker}:").removesuffix(f"{answer_marker}:")
    return text.strip()


def _paper_sl_principles(src: _Source, data: dict) -> tuple[SLPrinciple, ...]:
    principles = []
    for pid, raw in data.items():
        raw = _mapping(src, raw, pid, required=("prompt", "edit_request"))
        prompt = raw["prompt"]
        if isinstance(prompt, list):  # the paper wraps each critique request in a one-item list
            if len(prompt) != 1:
                src.fail(f"{pid}.prompt", f"expected one critique request; got {len(prompt)}")
            prompt = prompt[0]
        critique = _unframe(_text(src, prompt, f"{pid}.prompt"), "CritiqueRequest", "Critique")
        revision = _unframe(_text(src, raw["edit_request"], f"{pid}.edit_request"), "RevisionRequest", "Revision")
        principles.append(SLPrinciple(id=pid, critique=critique, revision=revision))
    return tuple(principles)


def _paper_rl_principles(src: _Source, data: list) -> tuple[RLPrinciple, ...]:
    # Each ends in "Options:"; the labeller writes that line itself, with the options after it.
    return tuple(RLPrinciple(id=f"madison{i}", instruction=_text(src, text, f"[{i}]").strip().removesuffix("Options:").strip()) for i, text in enumerate(data))


_TURN = re.compile(r"\n\n(Human|Assistant|CritiqueRequest|Critique|RevisionRequest|Revision):")
_ROLE = {
    "Human": "user",
    "CritiqueRequest": "user",
    "RevisionRequest": "user",
    "Assistant": "assistant",
    "Critique": "assistant",
    "Revision": "assistant",
}


def _parse_transcript(src: _Source, text: str, item: str) -> list[Message]:
    """Split a raw "\\n\\nHuman: ...\\n\\nAssistant: ..." transcript into chat messages.

    A last turn with no text is a cue for the model, not a message: critique examples end with an
    empty "Human:" (the start of the next example), choice prompts with an empty "Assistant:".
    """
    parts = _TURN.split("\n\n" + text.lstrip())
    if parts[0].strip():
        src.fail(item, f"text before the first 'Human:' turn: {parts[0].strip()[:40]!r}")
    markers, contents = parts[1::2], parts[2::2]
    messages = [{"role": _ROLE[marker], "content": content.strip()} for marker, content in zip(markers, contents)]
    if messages and not messages[-1]["content"]:
        messages.pop()
    return messages


def _paper_critique_examples(src: _Source, data: list) -> tuple[tuple[Message, ...], ...]:
    examples = []
    for i, text in enumerate(data):
        messages = _parse_transcript(src, _text(src, text, f"[{i}]"), f"[{i}]")
        examples.append(_conversation(src, messages, f"[{i}]", CRITIQUE_EXAMPLE_MIN_TURNS))
    return tuple(examples)


def _paper_choice_examples(src: _Source, data: list) -> tuple[tuple[Message, ...], ...]:
    """Each entry is a prompt with a right and a wrong response. The right one goes first in even
    entries and second in odd ones, so the examples do not teach a preference for a position."""
    examples = []
    for i, raw in enumerate(data):
        raw = _mapping(src, raw, f"[{i}]", required=("prompt", "corrects", "incorrects"))
        turns = _parse_transcript(src, _text(src, raw["prompt"], f"[{i}].prompt"), f"[{i}].prompt")
        if not turns or turns[-1]["role"] != "user":
            src.fail(f"[{i}].prompt", "expected a transcript ending with the human's turn and an empty 'Assistant:'")
        answers = {}
        for key in ("corrects", "incorrects"):
            values = _list(src, raw[key], f"[{i}].{key}")
            if len(values) != 1:
                src.fail(f"[{i}].{key}", f"expected exactly one response; got {len(values)}")
            answers[key] = _text(src, values[0], f"[{i}].{key}[0]").strip()
        correct_first = i % 2 == 0
        options = [answers["corrects"], answers["incorrects"]]
        if not correct_first:
            options.reverse()
        question = choice_text(turns, FEW_SHOT_CHOICE_INSTRUCTION, options)
        examples.append((user(question), assistant(choice_answer("A" if correct_first else "B"))))
    return tuple(examples)


# One chain-of-thought example: a conversation in H:/A: turns, a "{}" slot for the instruction, two
# options in [[[...]]], the reasoning, then the answer after an (artefact) "Human:" line.
_PRECOG = re.compile(
    r"\s*Human: Consider the following conversation between a human(?: \(H\))? and an assistant(?: \(A\))?:\n\n"
    r"(?P<transcript>.*?)\n\n\{\}\n"
    r" \(A\) \[\[\[(?P<a>.*?)\]\]\]\n"
    r" \(B\) \[\[\[(?P<b>.*?)\]\]\]\n\n"
    r"Assistant: (?P<reasoning>.*?)\n\n"
    r"Human:\nSo the answer is: \((?P<answer>[AB])\)\s*",
    re.S,
)


def _paper_precog_examples(src: _Source, data: list) -> tuple[tuple[Message, ...], ...]:
    """Chain-of-thought choice examples: the assistant reasons, then ends with "So the answer is: (X)".

    In the paper the answer follows a "Human:" line, a leftover of generating the reasoning up to the
    "Human:" stop string and then appending the answer cue; here it ends the assistant's turn.
    """
    examples = []
    for i, raw in enumerate(data):
        raw = _mapping(src, raw, f"[{i}]", required=("prompt",))
        match = _PRECOG.fullmatch(_text(src, raw["prompt"], f"[{i}].prompt"))
        if match is None:
            src.fail(
                f"[{i}].prompt",
                "not laid out like the paper's chain-of-thought examples: conversation, {} slot, (A) [[[...]]], (B) [[[...]]], reasoning, answer",
            )
        parts = re.split(r"(?:^|\n\n)(H|A):", match["transcript"])
        turns = [{"role": "user" if who == "H" else "assistant", "content": text.strip()} for who, text in zip(parts[1::2], parts[2::2])]
        if parts[0].strip() or not turns or turns[-1]["role"] != "user":
            src.fail(f"[{i}].prompt", "expected a conversation of 'H:'/'A:' turns ending with the human's turn")
        question = choice_text(turns, FEW_SHOT_CHOICE_INSTRUCTION, [match["a"].strip(), match["b"].strip()])
        answer = f"{match['reasoning'].strip()}\n\nSo the answer is: ({match['answer']})"
        examples.append((user(question), assistant(answer)))
    return tuple(examples)


# ---------------------------------------------------------------- small helpers


def _score(seed: int, key: str, kind: str, principle_id: str) -> bytes:
    return hashlib.sha256(json.dumps([seed, key, kind, principle_id]).encode()).digest()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
