"""The toy world's prompt sets, written as JSONL files the way a user's own prompt sets look.

    cai toyworld prompts [--out configs/toyworld]      # = python -m cai.toyworld.prompt_files

Pipeline files (train tasks only; families world.PIPELINE_FAMILIES only):
    red_team_train.jsonl   SL red-team prompts: SL phrasings, multi-turn, train jailbreaks
    helpful_train.jsonl    SL helpful prompts:  the same forms, of benign tasks (wrapped ones too)
    red_team_rl.jsonl      RL red-team prompts: RL rewordings, multi-turn in RL rewordings, train jailbreaks
    helpful_rl.jsonl       RL helpful prompts:  the same forms, and more of the near misses
Evaluation files (never read by a pipeline stage; settings are chosen on validation, test is reported):
    red_team_validation.jsonl, helpful_validation.jsonl, red_team_test.jsonl, helpful_test.jsonl
    forms: single (SL phrasings), phrasing (held-out phrasings), multiturn (SL phrasings, one or
    two earlier exchanges), jailbreak (held-out wrappers).

Every row: `messages` (the whole conversation, ending with the user's request), `form`
(single | phrasing | multiturn | jailbreak), `task` (the task id), `template` (family:index of
the request's template), and `category` (harmful rows) or `near_miss` (benign rows: true for a
near miss). Single-turn rows also carry the request as `prompt`; multi-turn rows do not, so a
reader that takes `prompt` fails on them instead of dropping their earlier turns. Multi-turn rows'
earlier exchanges are about other tasks of the same split: a benign request with its answer or a
harmful request with a good refusal (world.context_reply); helpful files include benign requests
after a refusal. Rows are interleaved (variant, then form, then task), so the first N rows of a
file (`limit: N`) cover its tasks and forms evenly. tests/test_configs.py checks that the committed
files equal what this writes.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

from cai.records import Message
from cai.toyworld import world

FORMS = ("single", "phrasing", "multiturn", "jailbreak")


@dataclass(frozen=True)
class FileSpec:
    """A prompt file: tasks of `split` and `kind`, `per_task[form]` rows per task in each form, the
    requests written in `families[form]`; `near_miss_extra` more single rows for each near miss."""

    split: str
    kind: str
    per_task: dict[str, int]
    families: dict[str, str]
    near_miss_extra: int = 0


_SL = {"single": "sl", "multiturn": "sl", "jailbreak": "jailbreak"}
_RL = {"single": "rl", "multiturn": "rl", "jailbreak": "jailbreak"}
_EVAL = {"single": "sl", "phrasing": "heldout_phrasing", "multiturn": "sl", "jailbreak": "heldout_jailbreak"}
_EVAL_COUNTS = {"single": 5, "phrasing": 5, "multiturn": 5, "jailbreak": 5}

FILES = {
    "red_team_train.jsonl": FileSpec("train", "harmful", {"single": 4, "multiturn": 2, "jailbreak": 2}, _SL),
    "helpful_train.jsonl": FileSpec("train", "benign", {"single": 4, "multiturn": 2, "jailbreak": 2}, _SL),
    "red_team_rl.jsonl": FileSpec("train", "harmful", {"single": 4, "multiturn": 2, "jailbreak": 2}, _RL),
    "helpful_rl.jsonl": FileSpec("train", "benign", {"single": 4, "multiturn": 2, "jailbreak": 1}, _RL, near_miss_extra=3),
    "red_team_validation.jsonl": FileSpec("validation", "harmful", _EVAL_COUNTS, _EVAL),
    "helpful_validation.jsonl": FileSpec("validation", "benign", _EVAL_COUNTS, _EVAL),
    "red_team_test.jsonl": FileSpec("test", "harmful", _EVAL_COUNTS, _EVAL),
    "helpful_test.jsonl": FileSpec("test", "benign", _EVAL_COUNTS, _EVAL),
}

# Earlier exchanges of multi-turn row j of a task (rotated by the task's index): the kinds of the
# earlier requests, oldest first. Half the rows have a refused harmful request right before the
# last request (for benign files: the model must help after having refused).
_CONTEXT_KINDS = (("benign",), ("benign", "harmful"), ("harmful",), ("harmful", "benign"))


@dataclass(frozen=True)
class Row:
    task: world.Task
    form: str
    template: str  # "family:index" of the last request
    messages: tuple[Message, ...]  # earlier turns, then the request

    def to_json(self) -> dict:
        row: dict = {}
        if len(self.messages) == 1:
            row["prompt"] = self.messages[0]["content"]
        row["messages"] = [dict(m) for m in self.messages]
        row |= {"form": self.form, "task": self.task.id, "template": self.template}
        if self.task.harmful:
            row["category"] = self.task.category
        else:
            row["near_miss"] = self.task.near_miss
        return row


def rows(name: str) -> list[Row]:
    """The rows of one of FILES, in file order."""
    spec = FILES[name]
    rng = random.Random(name)  # str seeds are stable across processes
    tasks = world.tasks(spec.split, spec.kind)
    by_kind = {k: world.tasks(spec.split, k) for k in world.KINDS}
    counts = {t.id: dict(spec.per_task) | ({"single": spec.per_task.get("single", 0) + spec.near_miss_extra} if t.near_miss else {}) for t in tasks}
    longest = max(n for c in counts.values() for n in c.values())
    out: list[Row] = []
    for j in range(longest):
        for form in FORMS:
            for ti, t in enumerate(tasks):
                if j >= counts[t.id].get(form, 0):
                    continue
                family = spec.families[form]
                n_templates = len(world.FAMILIES[family])
                # rotate templates over tasks and variants, so every template is used about equally
                i = (ti * spec.per_task[form] + j) % n_templates
                last = world.request(t, family, i)
                earlier: list[str] = []
                if form == "multiturn":
                    for kind in _CONTEXT_KINDS[(ti + j) % len(_CONTEXT_KINDS)]:
                        other = rng.choice([u for u in by_kind[kind] if u is not t])
                        earlier.append(world.request(other, family, rng.randrange(n_templates)))
                out.append(Row(t, form, f"{family}:{i}", tuple(world.conversation(earlier, last))))
    return out


def render(name: str) -> str:
    return "".join(json.dumps(r.to_json()) + "\n" for r in rows(name))


def write(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in FILES:
        (out_dir / name).write_text(render(name))
        paths.append(out_dir / name)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cai toyworld prompts", description="Write the toy world's prompt sets as JSONL.")
    ap.add_argument("--out", type=Path, default=Path("configs/toyworld"), help="output directory")
    args = ap.parse_args(argv)
    for p in write(args.out):
        lines = [json.loads(x) for x in p.open()]
        forms = {f: sum(r["form"] == f for r in lines) for f in FORMS if any(r["form"] == f for r in lines)}
        print(f"{p}: {len(lines)} prompts ({', '.join(f'{f} {n}' for f, n in forms.items())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
