"""Prompt sets: read prompts from JSONL, text, CSV, Parquet, saved HF datasets or hh-rlhf transcripts.

    from cai.config import PromptSource
    from cai.prompts import load_prompts
    print(load_prompts(PromptSource(path="harmless-base-test.jsonl.gz")).summary())

Every prompt is stripped; blank prompts and repeated texts are dropped and counted, never silently.
Each `Prompt.metadata` points back into the file: `{"line": n}` for line-based files (jsonl, text,
csv, hh-rlhf) or `{"row": n}` for tables and JSON arrays (parquet, hf, a `[...]` .json file), 1-based.
Blank lines of jsonl/csv files hold no record and are skipped; blank lines of a text file are blank prompts.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from cai.config import PromptSource
from cai.errors import InputError
from cai.records import Prompt

FORMATS = ("jsonl", "text", "csv", "parquet", "hf", "hh-rlhf")


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one source, in file order, with how many rows were dropped and why."""

    prompts: tuple[Prompt, ...]
    dropped_blank: int
    dropped_duplicate: int
    source: str

    def summary(self) -> str:
        return (
            f"{len(self.prompts):,} prompts from {self.source} "
            f"(dropped {self.dropped_blank:,} blank, {self.dropped_duplicate:,} duplicate)"
        )


@dataclass(frozen=True)
class _Row:
    """One record of a source file, with where it came from (for metadata and error messages)."""

    path: Path
    unit: str  # "line" or "row"
    number: int  # 1-based
    values: dict[str, Any]

    def error(self, message: str) -> InputError:
        return InputError(f"{self.path}: {self.unit} {self.number}: {message}")

    def get(self, field: str) -> Any:
        if field not in self.values:
            keys = ", ".join(map(repr, self.values)) or "none"
            raise self.error(f"missing field {field!r} (this {self.unit} has: {keys})")
        return self.values[field]


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
    fmt = _guess_format(path, source.field) if source.format == "auto" else source.format
    if source.split is not None and fmt != "hf":
        raise InputError(f"{path}: split {source.split!r} only applies to a saved HF dataset, not to {fmt}")
    if fmt == "text" and source.id_field:
        raise InputError(f"{path}: a text file has no fields, so id_field {source.id_field!r} cannot be read")
    field = {"text": "text", "hh-rlhf": "chosen"}.get(fmt, source.field)
    columns = [field] + ([source.id_field] if source.id_field else [])

    prompts: list[Prompt] = []
    seen_text: set[str] = set()
    first_with_id: dict[str, int] = {}
    blank = duplicate = 0
    for row in _read(path, fmt, columns, source.split):
        value = row.get(field)
        text = (_first_human_turn(row, field, value) if fmt == "hh-rlhf" else _text(row, field, value)).strip()
        if not text:
            blank += 1
            continue
        if text in seen_text:
            duplicate += 1
            continue
        seen_text.add(text)
        prompt_id = _id(row, source.id_field) if source.id_field else text_id(text)
        if prompt_id in first_with_id:
            raise row.error(f"id {prompt_id!r} already used by {row.unit} {first_with_id[prompt_id]} for a different prompt")
        first_with_id[prompt_id] = row.number
        prompts.append(Prompt(id=prompt_id, text=text, source=str(path), metadata={row.unit: row.number}))
        if source.limit is not None and len(prompts) == source.limit:
            break
    if not prompts:
        raise InputError(f"{path}: no prompts left (file is empty, or all dropped: {blank} blank, {duplicate} duplicate)")
    return PromptSet(tuple(prompts), blank, duplicate, str(path))


def text_id(text: str) -> str:
    """Stable id of a prompt text: survives reordering, reruns and surrounding whitespace."""
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- fields


def _text(row: _Row, field: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # chat messages [{role, content}], as in TRL and Hub datasets
        for message in value:
            if isinstance(message, dict) and message.get("role") == "user":
                if not isinstance(message.get("content"), str):
                    raise row.error(f"field {field!r}: the first user message has no string 'content'")
                return message["content"]
        raise row.error(f"field {field!r} is a list but holds no {{'role': 'user', 'content': ...}} message")
    raise row.error(f"field {field!r} is {_kind(value)}, expected a string or a list of chat messages")


_TURN_END = re.compile(r"\n\n(?:Human|Assistant):")


def _first_human_turn(row: _Row, field: str, transcript: Any) -> str:
    """'\\n\\nHuman: hi\\n\\nAssistant: ...' -> 'hi'. A turn may itself hold blank lines."""
    if not isinstance(transcript, str):
        raise row.error(f"field {field!r} is {_kind(transcript)}, expected an hh-rlhf transcript string")
    body = transcript.lstrip()
    if not body.startswith("Human:"):
        raise row.error(f"field {field!r} is not an hh-rlhf transcript (it should start with '\\n\\nHuman:')")
    body = body[len("Human:") :]
    end = _TURN_END.search(body)
    return body[: end.start()] if end else body


def _id(row: _Row, id_field: str) -> str:
    value = row.get(id_field)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
        raise row.error(f"id field {id_field!r} is {_kind(value)}, expected a non-empty string or an integer")
    return str(value).strip()


def _kind(value: Any) -> str:
    return "null" if value is None else f"of type {type(value).__name__} ({str(value)[:40]!r})"


# ---------------------------------------------------------------- formats


def _guess_format(path: Path, field: str) -> str:
    if path.is_dir():
        return "hf"
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".json")):
        rows = _read_json(path)
        first = next(rows, None)
        rows.close()  # only the first record was needed; closes the file now
        is_hh = first is not None and "chosen" in first.values and field not in first.values
        return "hh-rlhf" if is_hh else "jsonl"
    for suffix, fmt in ((".txt", "text"), (".csv", "csv"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise InputError(f"{path}: cannot tell the prompt format from the file name; set format to one of {', '.join(FORMATS)}")


def _read(path: Path, fmt: str, columns: list[str], split: str | None) -> Iterator[_Row]:
    if fmt in ("jsonl", "hh-rlhf"):
        return _read_json(path)
    if fmt == "text":
        return _read_text(path)
    if fmt == "csv":
        return _read_csv(path, columns)
    if fmt == "parquet":
        return _read_parquet(path, columns)
    return _read_hf(path, columns, split)


def _open(path: Path) -> TextIO:
    # utf-8-sig: spreadsheet exports start with a byte-order mark that would otherwise join the first header.
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _read_json(path: Path) -> Iterator[_Row]:
    """JSON Lines, or one JSON array of objects (told apart by the first character)."""
    with _open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            if line.lstrip().startswith("["):
                # Pad with the blank lines skipped so far, so JSON errors name the right line.
                yield from _read_json_array(path, "\n" * (number - 1) + line + f.read())
                return
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}: line {number}: invalid JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path}: line {number}: expected a JSON object, got one {_kind(record)}")
            yield _Row(path, "line", number, record)


def _read_json_array(path: Path, text: str) -> Iterator[_Row]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: line {e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise InputError(f"{path}: row {number}: expected a JSON object, got one {_kind(record)}")
        yield _Row(path, "row", number, record)


def _read_text(path: Path) -> Iterator[_Row]:
    with _open(path) as f:
        for number, line in enumerate(f, 1):
            yield _Row(path, "line", number, {"text": line})


def _read_csv(path: Path, columns: list[str]) -> Iterator[_Row]:
    with _open(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        _check_columns(path, columns, header)
        end = reader.line_num
        for values in reader:
            if values:  # a blank line holds no record
                # A quoted value may span lines: report the line the record starts on.
                yield _Row(path, "line", end + 1, dict(zip(header, values)))
            end = reader.line_num


def _read_parquet(path: Path, columns: list[str]) -> Iterator[_Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except pa.ArrowException as e:
        raise InputError(f"{path}: not a readable parquet file: {e}") from None
    _check_columns(path, columns, table.column_names)
    for number, record in enumerate(table.select(columns).to_pylist(), 1):
        yield _Row(path, "row", number, record)


def _read_hf(path: Path, columns: list[str], split: str | None) -> Iterator[_Row]:
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
    _check_columns(path, columns, data.column_names)
    for number, record in enumerate(data.select_columns(columns).to_list(), 1):
        yield _Row(path, "row", number, record)


def _check_columns(path: Path, needed: list[str], columns: list[str]) -> None:
    for column in needed:
        if column not in columns:
            raise InputError(f"{path}: no column {column!r} (columns: {', '.join(columns)})")
