"""Prompt sets: read prompts (single requests or conversations) from plain files and from the
published red-team and safety datasets, in their own formats.

    from cai.config import PromptSource
    from cai.prompts import load_prompts
    print(load_prompts(PromptSource(path="harmless-base-test.jsonl.gz")).summary())

A prompt is a conversation whose last turn is the request (`records.Prompt`: `text` is the last
user turn, `context` the earlier turns). Every turn is stripped; prompts whose request is blank and
repeated conversations are dropped and counted, never silently.

Where a prompt comes from is in its metadata: `{"line": n}` for line-based files (jsonl, text, csv,
hh-rlhf) or `{"row": n}` for tables and JSON arrays (parquet, hf, a `[...]` .json file), 1-based.
Errors name the file and the line (for a JSON array: the line its element starts on, and the row).
Blank lines of jsonl/csv files hold no record and are skipped; blank lines of a text file are blank prompts.

Formats (`PromptSource.format`):

- jsonl, csv, parquet, hf: the column `field` (default `prompt`, or else a `messages` column) holds
  a string or chat messages `[{"role", "content"}]` (TRL's conversational format). Messages: an
  optional leading system turn, then user and assistant turns alternating, starting with a user
  turn. The prompt is the conversation up to and including its last user turn (trailing assistant
  turns are dropped: they answer the request); the system turn is not part of the conversation a
  stage continues (stages put their own instructions first) and is kept in `metadata["system"]`.
  `turns: first` keeps only the first user turn.
- text: one prompt per line.
- hh-rlhf: Anthropic's hh-rlhf pairs (github.com/anthropics/hh-rlhf, `{harmless,helpful}-base/*.jsonl.gz`),
  transcripts `"\\n\\nHuman: ...\\n\\nAssistant: ..."` in `chosen`. Default `turns: first`: the
  first human turn is the prompt, as in the CAI paper. `turns: all`: the transcript up to its last
  human turn (the conversation as the red-teamer held it). A speaker that talks twice in a row
  (8 of the 2,312 harmless-base test transcripts) is one turn, its parts joined by a blank line.
- hh-red-team: hh-rlhf's red-team attempts (`red-team-attempts/red_team_attempts.jsonl.gz`, one
  JSON array despite the name; Ganguli et al. 2022): `transcript`, `min_harmlessness_score_transcript`,
  `num_params`, `model_type`, `rating`, `task_description`, `task_descripton_harmlessness_score`
  (sic), `red_team_member_id`, `is_upworker`, `tags`. Turns as hh-rlhf; metadata keeps `rating`,
  `task_description` and `tags`.
- advbench: AdvBench `harmful_behaviors.csv` (github.com/llm-attacks/llm-attacks, data/advbench;
  Zou et al. 2023): `goal` is the prompt (`target`, the affirmative answer attacks aim for, can be kept).
- harmbench: HarmBench behaviours (github.com/centerforaisafety/HarmBench,
  data/behavior_datasets/harmbench_behaviors_text_*.csv): `Behavior`, `FunctionalCategory`,
  `SemanticCategory`, `Tags`, `ContextString`, `BehaviorID`. A contextual behaviour's prompt is
  `f"{ContextString}\\n\\n---\\n\\n{Behavior}"`, the layout HarmBench's red-teaming baselines
  give it (e.g. baselines/gcg); id = `BehaviorID`; category = `SemanticCategory`;
  `metadata["functional_category"]` = `FunctionalCategory` (standard, contextual, copyright).
- strongreject: StrongREJECT (github.com/alexandrasouly/strongreject,
  strongreject_dataset/strongreject_{small_,}dataset.csv; Souly et al. 2024): `category`, `source`,
  `forbidden_prompt`.
- xstest: XSTest (github.com/paul-rottger/exaggerated-safety, xstest_prompts.csv; Röttger et al.
  2024): `id`, `prompt`, `type`, `label`, `focus`, `note`. Types starting with `contrast_` are unsafe
  requests, the others safe look-alikes; metadata keeps `type` (also as `category`) and `safe`.
  `subset: safe` selects the safe prompts (over-refusal is measured on them), `subset: unsafe` the
  contrast ones; prompts left out are counted.

The dataset formats read their published container (hh-* JSON, the others CSV) and also any
container told by the name (.jsonl/.json, .csv, .parquet, a saved HF dataset directory) with the
same columns. Every dataset keeps `metadata["category"]` where it has one; `keep: [col, ...]` copies
any other columns into metadata.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, get_args

from cai.config import PromptSource
from cai.errors import InputError
from cai.records import Message, Prompt

FORMATS = get_args(PromptSource.model_fields["format"].annotation)[1:]  # all but "auto"
DATASETS = ("hh-rlhf", "hh-red-team", "advbench", "harmbench", "strongreject", "xstest")

# Columns each dataset format reads (alternatives in a tuple), and those it reads when present.
_COLUMNS: dict[str, tuple[list[str], list[str]]] = {
    "advbench": (["goal"], []),
    "harmbench": (["Behavior", "ContextString", "SemanticCategory", "BehaviorID"], ["FunctionalCategory"]),
    "strongreject": (["forbidden_prompt", "category"], []),
    "xstest": (["prompt", "type"], ["label"]),
}
# The published header of each CSV dataset: `format: auto` recognises a CSV with exactly these columns.
_HEADERS = {
    "advbench": {"goal", "target"},
    "harmbench": {"Behavior", "FunctionalCategory", "SemanticCategory", "Tags", "ContextString", "BehaviorID"},
    "strongreject": {"category", "source", "forbidden_prompt"},
    "xstest": {"id", "prompt", "type", "label", "focus", "note"},
}
_RED_TEAM_KEPT = ("rating", "task_description", "tags")


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one source, in file order, with how many rows were dropped or left out and why."""

    prompts: tuple[Prompt, ...]
    dropped_blank: int
    dropped_duplicate: int
    source: str
    not_selected: int = 0  # rows left out by `subset`
    subset: str = "all"

    def summary(self) -> str:
        left_out = f", {self.not_selected:,} not in subset {self.subset}" if self.not_selected else ""
        return f"{len(self.prompts):,} prompts from {self.source} (dropped {self.dropped_blank:,} blank, {self.dropped_duplicate:,} duplicate{left_out})"


@dataclass(frozen=True)
class _Row:
    """One record of a source file, with where it came from (for metadata and error messages)."""

    path: Path
    unit: str  # "line" or "row"
    number: int  # 1-based
    values: dict[str, Any]
    line: int | None = None  # for a row of a JSON array: the line it starts on

    def error(self, message: str) -> InputError:
        where = f"line {self.line} (row {self.number})" if self.line is not None else f"{self.unit} {self.number}"
        return InputError(f"{self.path}: {where}: {message}")

    def get(self, field: str) -> Any:
        if field not in self.values:
            keys = ", ".join(map(repr, self.values)) or "none"
            raise self.error(f"missing field {field!r} (this {self.unit} has: {keys})")
        return self.values[field]


@dataclass(frozen=True)
class _Parsed:
    """What a format reads from one row: the conversation, its metadata, the dataset's own id."""

    turns: tuple[Message, ...]  # user/assistant alternating, ending with the request (a user turn); stripped
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    selected: bool = True  # False: left out by `subset`


def load_prompts(source: PromptSource) -> PromptSet:
    """Read, strip, drop blanks and duplicates (first occurrence kept), then keep the first `limit`."""
    path = Path(source.path)
    if not path.exists():
        raise InputError(f"prompt file not found: {path}")
    try:
        return _load(path, source)
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text: {e}") from None
    except (gzip.BadGzipFile, EOFError) as e:
        raise InputError(f"{path}: not a readable gzip file: {e}") from None


def _load(path: Path, source: PromptSource) -> PromptSet:
    fmt = _guess_format(path, source) if source.format == "auto" else source.format
    container = _container(path, fmt)
    _check_options(path, source, fmt, container)
    required, optional = _columns(fmt, source)

    prompts: list[Prompt] = []
    seen: set[tuple[tuple[str, str], ...]] = set()
    first_with_id: dict[str, int] = {}
    blank = duplicate = not_selected = 0
    for row in _read(path, container, required, optional, source.split):
        parsed = _parse(fmt, row, source)
        if not parsed.selected:
            not_selected += 1
            continue
        if not parsed.turns or not parsed.turns[-1]["content"]:
            blank += 1
            continue
        key = tuple((m["role"], m["content"]) for m in parsed.turns)
        if key in seen:  # the whole conversation repeats, not just its request
            duplicate += 1
            continue
        seen.add(key)
        prompt_id = _id(row, source.id_field) if source.id_field else parsed.id or conversation_id(parsed.turns)
        if prompt_id in first_with_id:
            raise row.error(f"id {prompt_id!r} already used by {row.unit} {first_with_id[prompt_id]} for a different prompt")
        first_with_id[prompt_id] = row.number
        metadata = {row.unit: row.number, **parsed.metadata, **{name: row.get(name) for name in source.keep}}
        prompts.append(Prompt(id=prompt_id, text=parsed.turns[-1]["content"], source=str(path), metadata=metadata, context=parsed.turns[:-1]))
        if source.limit is not None and len(prompts) == source.limit:
            break
    if not prompts:
        raise InputError(
            f"{path}: no prompts left (file is empty, or all dropped: {blank} blank, {duplicate} duplicate"
            + (f", {not_selected} not in subset {source.subset})" if not_selected else ")")
        )
    return PromptSet(tuple(prompts), blank, duplicate, str(path), not_selected, source.subset)


def text_id(text: str) -> str:
    """Stable id of a prompt text: survives reordering, reruns and surrounding whitespace."""
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()[:16]


def conversation_id(messages: list[Message] | tuple[Message, ...]) -> str:
    """Stable id of a conversation; a single user turn keeps the id of its text (`text_id`)."""
    if len(messages) == 1:
        return text_id(messages[0]["content"])
    payload = json.dumps([[m["role"], m["content"].strip()] for m in messages], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- options


def _check_options(path: Path, source: PromptSource, fmt: str, container: str) -> None:
    """Options that do not apply to this format are errors, never silently ignored."""
    if source.split is not None and container != "hf":
        raise InputError(f"{path}: split {source.split!r} only applies to a saved HF dataset, not to {fmt}")
    if fmt == "text" and (source.id_field or source.keep or source.field):
        option = "id_field" if source.id_field else "keep" if source.keep else "field"
        raise InputError(f"{path}: a text file has no fields, so {option} cannot be read")
    if source.field is not None and fmt in _COLUMNS:
        raise InputError(f"{path}: field does not apply to format {fmt} (it reads {', '.join(_COLUMNS[fmt][0])})")
    if source.turns is not None and (fmt in _COLUMNS or fmt in ("text", "csv")):
        raise InputError(f"{path}: turns applies to conversations (hh-rlhf, hh-red-team, chat messages in jsonl/parquet/hf), not to {fmt}")
    if source.subset != "all" and fmt != "xstest":
        raise InputError(f"{path}: subset {source.subset!r} only applies to format xstest (safe and unsafe prompts), not to {fmt}")


def _columns(fmt: str, source: PromptSource) -> tuple[list[str | tuple[str, ...]], list[str]]:
    """(columns a table must have, columns read when present); a tuple is "one of these"."""
    extra = ([source.id_field] if source.id_field else []) + list(source.keep)
    if fmt in _COLUMNS:
        required, optional = _COLUMNS[fmt]
        return [*required, *extra], optional
    if fmt == "hh-rlhf":
        return [source.field or "chosen", *extra], []
    if fmt == "hh-red-team":
        return [source.field or "transcript", *_RED_TEAM_KEPT, *extra], []
    return [source.field or ("prompt", "messages"), *extra], []


# ---------------------------------------------------------------- rows -> conversations


def _parse(fmt: str, row: _Row, source: PromptSource) -> _Parsed:
    if fmt == "hh-rlhf":
        return _Parsed(_up_to_request(_transcript(row, source.field or "chosen"), source.turns or "first"))
    if fmt == "hh-red-team":
        turns = _up_to_request(_transcript(row, source.field or "transcript"), source.turns or "first")
        return _Parsed(turns, {name: row.get(name) for name in _RED_TEAM_KEPT})
    if fmt == "advbench":
        return _Parsed(_request(_string(row, "goal")))
    if fmt == "harmbench":
        return _harmbench(row)
    if fmt == "strongreject":
        return _Parsed(_request(_string(row, "forbidden_prompt")), {"category": _string(row, "category").strip()})
    if fmt == "xstest":
        return _xstest(row, source.subset)
    return _plain(row, "text" if fmt == "text" else source.field, source.turns or "all")


def _plain(row: _Row, field: str | None, turns: str) -> _Parsed:
    if field is None:  # default: `prompt`, or else `messages`
        field = "messages" if "prompt" not in row.values and "messages" in row.values else "prompt"
    value = row.get(field)
    if isinstance(value, str):
        return _Parsed(_request(value))
    if isinstance(value, list):  # chat messages [{role, content}], as in TRL and Hub datasets
        return _messages(row, field, value, turns)
    raise row.error(f"field {field!r} is {_kind(value)}, expected a string or a list of chat messages")


def _request(text: str) -> tuple[Message, ...]:
    return ({"role": "user", "content": text.strip()},)


def _messages(row: _Row, field: str, value: list, turns: str) -> _Parsed:
    """[system?, user, assistant, user, ..., assistant?] -> the turns up to the last user turn."""
    if not value:
        return _Parsed(())
    if not any(isinstance(m, dict) and m.get("role") == "user" for m in value):
        raise row.error(f"field {field!r} is a list but holds no {{'role': 'user', 'content': ...}} message")
    conversation: list[Message] = []
    metadata: dict[str, Any] = {}
    for i, message in enumerate(value):
        where = f"field {field!r}[{i}]"
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise row.error(f"{where} is {_kind(message)}, expected a message {{'role': ..., 'content': <string>}}")
        role = message.get("role")
        if role == "system" and i == 0:
            metadata["system"] = message["content"].strip()
            continue
        if role not in ("user", "assistant", "system"):
            raise row.error(f"{where}: unknown role {role!r} (expected system, user or assistant)")
        expected = "user" if not conversation or conversation[-1]["role"] == "assistant" else "assistant"
        if role != expected:
            after = f"after a {conversation[-1]['role']!r} turn" if conversation else "at the start"
            raise row.error(f"{where}: role {role!r} {after}: turns must alternate user, assistant, ... (a system turn only first)")
        conversation.append({"role": role, "content": message["content"].strip()})
    return _Parsed(_up_to_request(conversation, turns), metadata)


def _up_to_request(conversation: list[Message], turns: str) -> tuple[Message, ...]:
    """turns="all": up to and including the last user turn; "first": the first user turn alone."""
    if turns == "first":
        return (conversation[0],)
    last_user = max(i for i, m in enumerate(conversation) if m["role"] == "user")
    return tuple(conversation[: last_user + 1])


_SPEAKER = re.compile(r"\n\n(Human|Assistant):")


def _transcript(row: _Row, field: str) -> list[Message]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> [user 'hi', assistant 'hello']. A turn may hold blank lines."""
    transcript = row.get(field)
    if not isinstance(transcript, str):
        raise row.error(f"field {field!r} is {_kind(transcript)}, expected an hh-rlhf transcript string")
    body = transcript.lstrip()
    if not body.startswith("Human:"):
        raise row.error(f"field {field!r} is not an hh-rlhf transcript (it should start with '\\n\\nHuman:')")
    parts = _SPEAKER.split("\n\n" + body)  # ["", "Human", " hi", "Assistant", " hello", ...]
    conversation: list[Message] = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        if conversation and conversation[-1]["role"] == role:  # the same speaker again: one turn
            conversation[-1]["content"] = f"{conversation[-1]['content']}\n\n{content.strip()}".strip()
        else:
            conversation.append({"role": role, "content": content.strip()})
    return conversation


def _harmbench(row: _Row) -> _Parsed:
    behavior, context = _string(row, "Behavior").strip(), _string(row, "ContextString").strip()
    text = f"{context}\n\n---\n\n{behavior}" if context else behavior  # HarmBench's own layout
    metadata: dict[str, Any] = {"category": _string(row, "SemanticCategory").strip()}
    if "FunctionalCategory" in row.values:
        metadata["functional_category"] = _string(row, "FunctionalCategory").strip()
    behavior_id = _string(row, "BehaviorID").strip()
    if not behavior_id and behavior:
        raise row.error("field 'BehaviorID' is empty")
    return _Parsed(_request(text) if behavior else (), metadata, behavior_id)


def _xstest(row: _Row, subset: str) -> _Parsed:
    kind = _string(row, "type").strip()
    safe = not kind.startswith("contrast_")
    label = row.values.get("label")
    if isinstance(label, str) and label.strip() in ("safe", "unsafe") and (label.strip() == "safe") != safe:
        raise row.error(f"type {kind!r} is a {'safe' if safe else 'contrast (unsafe)'} type but label is {label.strip()!r}")
    selected = subset == "all" or (subset == "safe") == safe
    return _Parsed(_request(_string(row, "prompt")), {"category": kind, "type": kind, "safe": safe}, selected=selected)


def _string(row: _Row, field: str) -> str:
    value = row.get(field)
    if value is None:  # an empty cell of a parquet/HF table
        return ""
    if not isinstance(value, str):
        raise row.error(f"field {field!r} is {_kind(value)}, expected a string")
    return value


def _id(row: _Row, id_field: str) -> str:
    value = row.get(id_field)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
        raise row.error(f"id field {id_field!r} is {_kind(value)}, expected a non-empty string or an integer")
    return str(value).strip()


def _kind(value: Any) -> str:
    return "null" if value is None else f"of type {type(value).__name__} ({str(value)[:40]!r})"


# ---------------------------------------------------------------- containers


def _guess_format(path: Path, source: PromptSource) -> str:
    container = _container(path, None)
    if container == "json":
        rows = _read_json(path)
        first = next(rows, None)
        rows.close()  # only the first record was needed; closes the file now
        if first is not None and source.field is None and "prompt" not in first.values and "messages" not in first.values:
            if "chosen" in first.values:
                return "hh-rlhf"
            if "transcript" in first.values:
                return "hh-red-team"
        return "jsonl"
    if container == "csv" and source.field is None:
        with _open(path) as f:
            header = next(csv.reader(f), None)
        for fmt, columns in _HEADERS.items():
            if header is not None and set(header) == columns and len(header) == len(columns):
                return fmt
    return container


def _container(path: Path, fmt: str | None) -> str:
    """How the file is stored: json, text, csv, parquet or hf, from the format or else the name."""
    if fmt in ("jsonl", "text", "csv", "parquet", "hf"):
        return "json" if fmt == "jsonl" else fmt
    if path.is_dir():
        return "hf"
    name = path.name.lower().removesuffix(".gz")
    for suffixes, container in (((".jsonl", ".json"), "json"), ((".txt",), "text"), ((".csv",), "csv"), ((".parquet",), "parquet")):
        if name.endswith(suffixes) and (fmt is None or container != "text"):
            return container
    if fmt in ("hh-rlhf", "hh-red-team"):
        return "json"  # as published
    if fmt is not None:
        return "csv"
    raise InputError(f"{path}: cannot tell the prompt format from the file name; set format to one of {', '.join(FORMATS)}")


def _read(path: Path, container: str, required: list, optional: list[str], split: str | None) -> Iterator[_Row]:
    if container == "json":
        return _read_json(path)
    if container == "text":
        return _read_text(path)
    if container == "csv":
        return _read_csv(path, required)
    if container == "parquet":
        return _read_parquet(path, required, optional)
    return _read_hf(path, required, optional, split)


def _open(path: Path) -> TextIO:
    # utf-8-sig: spreadsheet exports start with a byte-order mark that would otherwise join the first header.
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _read_json(path: Path) -> Iterator[_Row]:
    """JSON Lines, or one JSON array of objects (told apart by the first character of the file)."""
    with _open(path) as f:
        first = True
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            if first and line.lstrip().startswith("["):
                # Pad with the blank lines skipped so far, so errors name the right line.
                yield from _read_json_array(path, "\n" * (number - 1) + line + f.read())
                return
            first = False
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}: line {number}: invalid JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path}: line {number}: expected a JSON object, got one {_kind(record)}")
            yield _Row(path, "line", number, record)


_SPACE = re.compile(r"\s*")


def _read_json_array(path: Path, text: str) -> Iterator[_Row]:
    """Element by element, so each row knows the line it starts on (a whole-file json.loads would not)."""
    decoder = json.JSONDecoder()
    start = text.index("[")
    first_line = text.count("\n", 0, start) + 1
    i, line, counted, number = start + 1, first_line, start, 0
    while True:
        i = _SPACE.match(text, i).end()
        if i < len(text) and text[i] == "]" and number == 0:
            i += 1
            break
        try:
            record, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: line {e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
        line += text.count("\n", counted, i)
        counted, number = i, number + 1
        row = _Row(path, "row", number, record if isinstance(record, dict) else {}, line)
        if not isinstance(record, dict):
            raise row.error(f"expected a JSON object, got one {_kind(record)}")
        yield row
        i = _SPACE.match(text, end).end()
        if text[i : i + 1] == ",":
            i += 1
            continue
        if text[i : i + 1] == "]":
            i += 1
            break
        where = text.count("\n", 0, i) + 1
        raise InputError(f"{path}: line {where}: invalid JSON: expected ',' or ']' after the element of row {number}")
    rest = _SPACE.match(text, i).end()
    if rest < len(text):
        where = text.count("\n", 0, rest) + 1
        raise InputError(
            f"{path}: line {where}: extra data after the JSON array that starts on line {first_line} "
            "(JSON Lines hold one object per line; a .json file holds one array)"
        )


def _read_text(path: Path) -> Iterator[_Row]:
    with _open(path) as f:
        for number, line in enumerate(f, 1):
            yield _Row(path, "line", number, {"text": line})


def _read_csv(path: Path, required: list) -> Iterator[_Row]:
    with _open(path) as f:
        # strict: an unterminated quote is an error, not a value that swallows the rest of the file.
        reader = csv.reader(f, strict=True)
        end = 0
        try:
            header = next(reader, None)
            if header is None:
                return
            _select(path, header, required, [])
            end = reader.line_num
            for values in reader:
                if values:  # a blank line holds no record
                    # A quoted value may span lines: report the line the record starts on.
                    row = _Row(path, "line", end + 1, dict(zip(header, values)))
                    if len(values) != len(header):
                        raise row.error(f"{len(values)} values, but the header has {len(header)} columns")
                    yield row
                end = reader.line_num
        except csv.Error as e:
            problem = "a quoted value is never closed" if "unexpected end of data" in str(e) else str(e)
            raise InputError(f"{path}: line {end + 1}: malformed CSV record: {problem}") from None


def _read_parquet(path: Path, required: list, optional: list[str]) -> Iterator[_Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except pa.ArrowException as e:
        raise InputError(f"{path}: not a readable parquet file: {e}") from None
    columns = _select(path, table.column_names, required, optional)
    for number, record in enumerate(table.select(columns).to_pylist(), 1):
        yield _Row(path, "row", number, record)


def _read_hf(path: Path, required: list, optional: list[str], split: str | None) -> Iterator[_Row]:
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: not a dataset saved with datasets' save_to_disk") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            given = "no split was given" if split is None else f"there is no split {split!r}"
            raise InputError(f"{path}: holds splits {', '.join(data)}; {given}: set split to one of them")
        data = data[split]
    elif split is not None:
        raise InputError(f"{path}: split {split!r} given, but this dataset has no splits")
    columns = _select(path, data.column_names, required, optional)
    for number, record in enumerate(data.select_columns(columns).to_list(), 1):
        yield _Row(path, "row", number, record)


def _select(path: Path, header: list[str], required: list, optional: list[str]) -> list[str]:
    """The columns to read; a required entry may be a tuple of alternatives (the first present is read)."""
    columns = []
    for need in required:
        options = need if isinstance(need, tuple) else (need,)
        present = [c for c in options if c in header]
        if not present:
            names = " or ".join(map(repr, options))
            raise InputError(f"{path}: no column {names} (columns: {', '.join(header)})")
        columns.append(present[0])
    return list(dict.fromkeys(columns + [c for c in optional if c in header]))
