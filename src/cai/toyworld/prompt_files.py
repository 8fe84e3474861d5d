"""Write the toy world's prompt sets as JSONL files, the way a user's own prompt sets look.

    cai toyworld prompts [--out configs/toyworld]

red_team_train.jsonl / helpful_train.jsonl: prompts of the *train* tasks, the only ones pipeline
stages read. red_team_heldout.jsonl / helpful_heldout.jsonl: prompts of the held-out tasks, for
evaluation only. tests/test_configs.py checks that the committed files equal what this writes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cai.toyworld import world

FILES = {
    "red_team_train.jsonl": ("train", "harmful"),
    "helpful_train.jsonl": ("train", "benign"),
    "red_team_heldout.jsonl": ("heldout", "harmful"),
    "helpful_heldout.jsonl": ("heldout", "benign"),
}


def render(split: str, kind: str) -> str:
    return "".join(json.dumps({"prompt": p}) + "\n" for p in world.prompts(split, kind))


def write(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (split, kind) in FILES.items():
        (out_dir / name).write_text(render(split, kind))
        paths.append(out_dir / name)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cai toyworld prompts", description="Write the toy world's prompt sets as JSONL.")
    ap.add_argument("--out", type=Path, default=Path("configs/toyworld"), help="output directory")
    args = ap.parse_args(argv)
    for p in write(args.out):
        print(f"{p}: {sum(1 for _ in p.open())} prompts")
    return 0
