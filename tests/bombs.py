"""Billion-laughs files like those of the hardening issue: nested YAML anchors and aliases, a few hundred
bytes that expand to 9**levels items. With levels=9 (387 million items) a 413-byte config made
`cai config show` grow past 557 MB and 40 s, and a 358-byte constitution did the same to
`cai constitution validate`; tests that load them in-process use fewer levels, so that a reader
that expands them fails the test instead of the machine."""

LOL = '["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'

CONFIG_HEAD = "run_dir: runs/x\nconstitution: const.yaml\n"  # the first anchor is on line 3
CONSTITUTION_HEAD = "rl_principles:\n  - id: a\n    instruction: Which is better?\n"  # ... on line 4


def laughs(levels: int = 9) -> str:
    """l0: &l0 [9 x "lol"], then lN: &lN [9 x *l(N-1)]: 9**levels items once expanded."""
    rows = [f"l0: &l0 {LOL}"]
    rows += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(rows) + "\n"
