"""Reading the YAML and JSON files users write (configs, constitutions, `--set` values), safely.

    data, lines = load_yaml(Path("run.yaml"))      # lines: {"critique.revisions": 4, ...}
    value = parse_yaml("[1, 2]", "--set 'critique.stop=[1, 2]'")[0]
    data = load_json(Path("constitution.json"))
    text = dump_yaml(data)                          # never writes an anchor, so it loads back

Every problem is an `InputError` whose message starts with the file (or the `--set` item) and says
where: the line, and for bad bytes the byte offset. The rules, the same for every caller:

- **UTF-8 only.** Bad bytes are reported with their line and byte offset (a leading BOM is
  accepted: Windows editors add one).
- **No anchors or aliases (`&a`, `*a`).** Loading stops at the first one, before anything is
  expanded. We reject them rather than bound them: nested aliases ("billion laughs") turn a 400-byte
  file into 9^9 list items, PyYAML only shares the aliased objects, and every later walk over the
  data (line maps, validation, `cai config show`) expands them, so a bound would have to hold in
  every one of those walks. Nothing a cai file holds needs them: write the value out (or use --set).
- **No duplicate keys.** PyYAML and `json` keep the last one silently; here both lines are named:
  `run.yaml: critique.revisions: duplicate key (lines 4 and 9)`.
- **Keys are plain text, kept as written** (`on:` is the key "on", not True; `1:` is "1").
- **No tags on lists or mappings** (`!!omap`, `!!set`, `!foo`); scalars get YAML's safe types
  (a tag PyYAML's safe loader does not know is an error).
- **At most MAX_DEPTH levels of nesting**: PyYAML builds nodes recursively, so 10,000 `[` would
  otherwise end in a RecursionError traceback.
- Syntax errors are one line: `run.yaml: line 3, column 7: not valid YAML: <problem>`.

Item names are `a.b[0].c` (list positions in brackets), for configs and constitutions alike.
"""

from __future__ import annotations

import codecs
import json
import json.decoder
import json.scanner
from pathlib import Path
from typing import Any

import yaml

from cai.errors import InputError

MAX_DEPTH = 100  # levels of nested lists/mappings; cai's own files use fewer than 10

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


# ---------------------------------------------------------------- text


def read_text(path: Path) -> str:
    """The file as text; InputError naming the file, line and byte offset if it is not UTF-8."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        hint = " (it looks like UTF-16)" if raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else ""
        raise InputError(
            f"{path}: line {line}: not UTF-8 text: byte 0x{raw[e.start]:02x} at byte offset {e.start} ({e.reason}){hint}; save the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def item_name(parts: tuple[str | int, ...] | list[str | int]) -> str:
    """("sl_principles", 3, "id") -> "sl_principles[3].id"."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# ---------------------------------------------------------------- YAML


def load_yaml(path: Path) -> tuple[Any, dict[str, int]]:
    """(data, {item name: 1-based line}) of a YAML file; data is None for an empty file."""
    return parse_yaml(read_text(path), str(path))


def parse_yaml(text: str, source: str) -> tuple[Any, dict[str, int]]:
    """(data, {item name: 1-based line}) of YAML text; `source` starts every error message.

    Data is built from PyYAML's node tree by our own walk (not its constructor), so duplicate keys
    and non-text keys are seen, and each item's line is recorded on the way. The root is item ""."""
    try:
        loader = _Loader(text, source)  # the reader checks every character here
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
        if root is None:
            return None, {}
        lines: dict[str, int] = {}
        return _build(root, (), lines, source, yaml.constructor.SafeConstructor()), lines
    except yaml.YAMLError as e:
        raise InputError(_yaml_error(source, text, e)) from None


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases, and deep nesting, as the parser meets them."""

    def __init__(self, text: str, source: str):
        super().__init__(text)
        self.source = source
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            kind = f"alias *{event.anchor}" if isinstance(event, yaml.AliasEvent) else f"anchor &{event.anchor}"
            raise InputError(
                f"{self.source}: line {line}: YAML {kind}: anchors and aliases are not allowed in cai files "
                "(nested aliases can expand a small file into gigabytes); write the value out in full"
            )
        if self.depth >= MAX_DEPTH:
            raise InputError(f"{self.source}: line {line}: nested more than {MAX_DEPTH} levels deep")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def dump_yaml(data: Any) -> str:
    """YAML text that `parse_yaml` reads back: keys in their order, and never an anchor or alias
    (PyYAML writes `&id001`/`*id001` when one object appears twice in the data)."""
    return yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True)


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _build(node: yaml.Node, parts: tuple[str | int, ...], lines: dict[str, int], source: str, constructor) -> Any:
    name = item_name(parts)
    lines.setdefault(name, node.start_mark.line + 1)  # a mapping value already has its key's line
    if isinstance(node, yaml.ScalarNode):
        return constructor.construct_object(node)
    if node.tag not in (_MAP_TAG, _SEQ_TAG):
        raise InputError(f"{source}: {name or 'top level'} (line {node.start_mark.line + 1}): YAML tag {node.tag} is not supported")
    if isinstance(node, yaml.SequenceNode):
        return [_build(v, (*parts, i), lines, source, constructor) for i, v in enumerate(node.value)]
    out: dict[str, Any] = {}
    first: dict[str, yaml.Mark] = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            raise InputError(f"{source}: {name or 'top level'} (line {line}): keys must be plain text, not a list or mapping")
        key = key_node.value
        child = (*parts, key)
        if key in out:
            raise InputError(f"{source}: {item_name(child)}: duplicate key ({_two_places(first[key], key_node.start_mark)})")
        first[key] = key_node.start_mark
        lines[item_name(child)] = line
        out[key] = _build(value_node, child, lines, source, constructor)
    return out


def _two_places(a: yaml.Mark, b: yaml.Mark) -> str:
    if a.line == b.line:  # flow style, e.g. a --set value: {x: 1, x: 2}
        return f"line {a.line + 1}, columns {a.column + 1} and {b.column + 1}"
    return f"lines {a.line + 1} and {b.line + 1}"


def _yaml_error(source: str, text: str, e: yaml.YAMLError) -> str:
    """PyYAML's several-line message, as one line that starts with the file and the line."""
    if isinstance(e, yaml.reader.ReaderError):  # a control character; position counts characters
        line = text.count("\n", 0, e.position) + 1
        return f"{source}: line {line}: not valid YAML: character #x{e.character:04x} is not allowed"
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = ""
        if e.context and e.context_mark and mark and e.context_mark.line != mark.line:
            context = f" ({e.context} at line {e.context_mark.line + 1})"
        problem = e.problem or e.context or "syntax error"
        return f"{source}: {where}not valid YAML: {problem}{context}"
    return f"{source}: not valid YAML: {' '.join(str(e).split())}"


# ---------------------------------------------------------------- JSON


def load_json(path: Path) -> Any:
    """A JSON file's data; InputError for bad bytes, bad syntax and duplicate keys (the key and both
    lines named; the lines are those of the two values).

    Uses json's pure-Python scanner with our object parser, which sees each object's pairs with the
    offset of every value (0.2 ms for the CAI paper's largest file, 10 kB: strings are still
    scanned in C)."""
    text = read_text(path)
    try:
        return _json_decoder(str(path)).decode(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None


def _json_decoder(source: str) -> json.JSONDecoder:
    decoder = json.JSONDecoder()

    def parse_object(s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo=None):
        starts: list[int] = []  # offset of each value of this object, in order

        def scan_value(s: str, idx: int):
            starts.append(idx)
            return scan_once(s, idx)

        pairs, end = json.decoder.JSONObject(s_and_end, strict, scan_value, None, list, memo)
        out: dict[str, Any] = {}
        first: dict[str, int] = {}
        for i, (key, value) in enumerate(pairs):
            if key in out:
                s = s_and_end[0]
                line_of = lambda j: s.count("\n", 0, starts[j]) + 1  # noqa: E731 (only on the error path)
                raise InputError(f"{source}: {key}: duplicate key (lines {line_of(first[key])} and {line_of(i)})")
            first[key] = i
            out[key] = value
        return out, end

    decoder.parse_object = parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    return decoder
