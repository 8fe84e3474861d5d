"""cai.yamlio: the rules every YAML/JSON file a user writes is read by (configs and constitutions
test them through their loaders; these are the rules no loader test reaches)."""

import datetime
import json

import pytest
from anchors import anchor

from cai.errors import InputError
from cai.yamlio import MAX_DEPTH, dump_yaml, item_name, load_json, load_yaml, parse_yaml


def test_data_and_the_line_of_every_item():
    data, lines = parse_yaml("a: 1\nb:\n  c: [x, {d: 2}]\n  e:\n    - f\n", "f.yaml")
    assert data == {"a": 1, "b": {"c": ["x", {"d": 2}], "e": ["f"]}}
    assert lines == {"": 1, "a": 1, "b": 2, "b.c": 3, "b.c[0]": 3, "b.c[1]": 3, "b.c[1].d": 3, "b.e": 4, "b.e[0]": 5}
    assert item_name(("sl_principles", 3, "id")) == "sl_principles[3].id" and item_name([0, "a"]) == "[0].a"


def test_keys_are_text_as_written_values_get_yaml_types():
    data, _ = parse_yaml("on: yes\n1: 2024-01-01\nnull: ~\n", "f.yaml")
    assert data == {"on": True, "1": datetime.date(2024, 1, 1), "null": None}
    with pytest.raises(InputError, match=r"^f.yaml: top level \(line 1\): keys must be plain text"):
        parse_yaml("? [a, b]\n: 1\n", "f.yaml")


def test_empty_documents_and_a_byte_order_mark():
    assert parse_yaml("", "f.yaml") == (None, {})
    assert parse_yaml("# only a comment\n", "f.yaml") == (None, {})
    assert parse_yaml("\ufeffa: 1\n", "f.yaml")[0] == {"a": 1}


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: !!omap [x: 1]\n", r"^f.yaml: a \(line 1\): YAML tag tag:yaml.org,2002:omap is not supported$"),
        ("a: !!python/object:os.system {}\n", r"^f.yaml: a \(line 1\): YAML tag tag:yaml.org,2002:python/object:os.system is not supported$"),
        ("a: !!python/name:os.system x\n", r"^f.yaml: line 1, column 4: not valid YAML: could not determine a constructor"),
        ("a: 1\n---\nb: 2\n", r"^f.yaml: line 2, column 1: not valid YAML: but found another document"),
        ("a: b: c\n", r"^f.yaml: line 1, column 5: not valid YAML: mapping values are not allowed here$"),
        ("a: 1\nb: x\x07y\n", r"^f.yaml: line 2: not valid YAML: character #x0007 is not allowed$"),
        ("a: {x: 1, x: 2}\n", r"^f.yaml: a.x: duplicate key \(line 1, columns 5 and 11\)$"),
        ("- x\n- y: 1\n  y: 2\n", r"^f.yaml: \[1\].y: duplicate key \(lines 2 and 3\)$"),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), rf"^f.yaml: line 1: nested more than {MAX_DEPTH} levels deep$"),
    ],
)
def test_what_is_refused_is_one_line_naming_the_place(text, message):
    with pytest.raises(InputError, match=message) as err:
        parse_yaml(text, "f.yaml")
    assert "\n" not in str(err.value)


def test_deep_but_allowed_nesting_loads():
    text = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    data, _ = parse_yaml(text, "f.yaml")
    for _ in range(MAX_DEPTH - 1):
        data = data[0]
    assert data == []


def test_dump_never_writes_an_alias_so_it_reads_back():
    shared = ["###", "\n\nHuman:"]
    data = {"critique": {"stop": shared}, "sample": {"stop": shared}, "text": "café"}
    text = dump_yaml(data)
    assert "&" not in text and "*" not in text and "café" in text
    assert parse_yaml(text, "f.yaml")[0] == data


def test_json_reads_like_json_loads(tmp_path):
    for path in sorted(anchor("anthropic-cai-paper").glob("*.json")):
        assert load_json(path) == json.loads(path.read_text(encoding="utf-8"))
    path = tmp_path / "x.json"
    path.write_text('{"a": [1, 2.5, null, true, "\\u00e9"], "b": {}}')
    assert load_json(path) == {"a": [1, 2.5, None, True, "é"], "b": {}}
    path.write_text('{"a": 1,}')
    with pytest.raises(InputError, match=r"x.json: not valid JSON: .* \(line 1, column"):
        load_json(path)


def test_utf16_files_get_a_hint(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes("a: 1\n".encode("utf-16"))
    with pytest.raises(InputError, match=r"line 1: not UTF-8 text: byte 0x(ff|fe) at byte offset 0 .*\(it looks like UTF-16\)"):
        load_yaml(path)
