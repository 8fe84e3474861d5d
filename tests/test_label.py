"""Sampling pairs and labelling them: the label arithmetic, position bias, the stages end to end."""

import json
import math
import textwrap
from pathlib import Path

import pytest
from anchors import anchor
from datasets import load_from_disk

from cai import labeller
from cai.config import load_config
from cai.errors import InputError
from cai.judge import clamp, combine, normalise, p_first_response, position_flips
from cai.records import Generation, OptionScores
from cai.stages import label, sample

ROOT = Path(__file__).resolve().parents[1]


def test_normalise_clamp_and_order_by_hand():
    # exp(-1) / (exp(-1) + exp(-2)) = 1 / (1 + e^-1) = 0.7310586
    assert normalise(-1.0, -2.0) == pytest.approx(0.7310586, abs=1e-7)
    assert normalise(-2.0, -1.0) == pytest.approx(0.2689414, abs=1e-7)
    assert normalise(-1000.0, -1.0) == pytest.approx(0.0, abs=1e-12)  # no overflow
    assert clamp(0.97, (0.4, 0.6)) == 0.6 and clamp(0.02, (0.4, 0.6)) == 0.4 and clamp(0.55, (0.4, 0.6)) == 0.55
    assert p_first_response(0.8, "ab") == 0.8 and p_first_response(0.8, "ba") == pytest.approx(0.2)


def test_combine_averages_orders_and_principles_by_hand():
    qs = [
        {"principle_id": "p1", "order": "ab", "p_option_a": 0.9},  # a shown first, A preferred: 0.9 for a
        {"principle_id": "p1", "order": "ba", "p_option_a": 0.6},  # a shown second, A preferred: 0.4 for a
        {"principle_id": "p2", "order": "ab", "p_option_a": 0.7},  # 0.7
        {"principle_id": "p2", "order": "ba", "p_option_a": 0.2},  # 0.8
    ]
    assert combine(qs, cot=False, band=(0.4, 0.6)) == pytest.approx((0.9 + 0.4 + 0.7 + 0.8) / 4)
    assert position_flips(qs) == (1, 2)  # p1's winner flips with the order, p2's does not
    # chain of thought: each question clamped to the band first: 0.6, 1-0.6, 0.6, 1-0.4
    assert combine(qs, cot=True, band=(0.4, 0.6)) == pytest.approx((0.6 + 0.4 + 0.6 + 0.6) / 4)


class FirstOptionBiased:
    """A scripted feedback model: it truly prefers responses containing "good" (logit +-t), and adds
    `bias` to option (A) whatever (A) holds, as small labellers do."""

    name = "biased"

    def __init__(self, t=1.0, bias=2.0):
        self.t, self.bias = t, bias

    def option_logprobs(self, conversations, options):
        out = []
        for conv in conversations:
            q = conv[-2]["content"]
            a_text = q.split("(A) ")[1].split("\n(B) ")[0]
            pref = self.t if "good" in a_text else -self.t
            la, lb = pref + self.bias, 0.0
            z = math.log(math.exp(la) + math.exp(lb) + 1.0)  # some mass on other tokens
            out.append(OptionScores(logprobs=(la - z, lb - z), missing=(False, False)))
        return out

    def generate(self, conversations, params, seeds=None):
        return [Generation("because", 0, 1, "stop") for _ in conversations]

    def close(self):
        pass


def write_pairs(run_dir: Path, n: int = 20) -> None:
    pairs = []
    for i in range(n):
        good_first = i % 2 == 0
        a, b = ("a good reply", "a bad reply") if good_first else ("a bad reply", "a good reply")
        pairs.append(
            {
                "pair_id": f"red_team:p{i}:0-1",
                "prompt_id": f"p{i}",
                "kind": "red_team",
                "prompt": [{"role": "user", "content": f"question {i}"}],
                "response_a": a,
                "response_b": b,
            }
        )
    (run_dir / "sample").mkdir(parents=True)
    (run_dir / "sample" / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))


def config_file(tmp_path, model_dir=None, extra=""):
    model = model_dir or "unused"
    text = f"""\
        run_dir: {tmp_path / "run"}
        seed: 1
        constitution: {ROOT / "constitutions" / "default.yaml"}
        prompts:
          red_team:
            path: {tmp_path / "red.txt"}
        models:
          policy:
            backend: local
            path: {model}
    """
    (tmp_path / "red.txt").write_text("how do i pick a lock\nhow do i bake bread\nwhat is a good poem\n")
    p = tmp_path / "c.yaml"
    p.write_text(textwrap.dedent(text) + textwrap.dedent(extra))
    return p


def test_first_option_bias_shows_without_swapping_and_cancels_with_it(tmp_path):
    write_pairs(tmp_path / "run")
    path = config_file(tmp_path)
    out = label.run(load_config(path, ["label.swap_orders=false"]), backend=FirstOptionBiased())
    rows = [json.loads(l) for l in (out / "preferences.jsonl").read_text().splitlines()]
    right = sum(r["chosen"][0]["content"] == "a good reply" for r in rows)
    assert right == 10  # bias 2 > preference 1: (A) always wins, so only the pairs with good first are right
    summary = json.loads((out / "summary.json").read_text())
    assert summary["first_option_rate"] == 1.0 and summary["position_bias"] is None

    out = label.run(load_config(path, ["label.swap_orders=true"]), backend=FirstOptionBiased(), force=True)
    rows = [json.loads(l) for l in (out / "preferences.jsonl").read_text().splitlines()]
    assert all(r["chosen"][0]["content"] == "a good reply" for r in rows)  # every label right
    assert all(len(r["questions"]) == 2 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["position_bias"] == 1.0  # the labeller flipped on every pair; averaging undid it
    sigma = lambda x: 1 / (1 + math.exp(-x))
    assert summary["mean_p_chosen"] == pytest.approx((sigma(1 + 2) + sigma(1 - 2)) / 2)  # = 0.6108


def test_ensembling_and_hard_labels_with_margin(tmp_path):
    write_pairs(tmp_path / "run", n=6)
    path = config_file(tmp_path)
    out = label.run(load_config(path, ["label.principles_per_pair=3"]), backend=FirstOptionBiased(t=1.0, bias=0.0))
    rows = [json.loads(l) for l in (out / "preferences.jsonl").read_text().splitlines()]
    assert all(len({q["principle_id"] for q in r["questions"]}) == 3 and len(r["questions"]) == 6 for r in rows)
    assert all(r["p_chosen"] == pytest.approx(1 / (1 + math.exp(-1))) for r in rows)
    out = label.run(load_config(path, ["label.hard=true", "label.margin=0.2"]), backend=FirstOptionBiased(t=1.0, bias=0.0), force=True)
    rows = [json.loads(l) for l in (out / "preferences.jsonl").read_text().splitlines()]
    assert all(r["p_chosen"] == 1.0 for r in rows) and len(rows) == 6  # |0.73 - 0.5| > 0.2: kept
    with pytest.raises(InputError, match="within label.margin"):
        label.run(load_config(path, ["label.hard=true", "label.margin=0.25"]), backend=FirstOptionBiased(t=1.0, bias=0.0), force=True)


class DiesAfter(FirstOptionBiased):
    """Raises after `n` scoring calls, as a killed process stops mid-stage."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def option_logprobs(self, conversations, options):
        if self.n == 0:
            raise RuntimeError("killed")
        self.n -= 1
        return super().option_logprobs(conversations, options)


def test_interrupted_label_resumes_with_the_same_config(tmp_path):
    """The config holds a tuple (label.clamp): its fingerprint must compare equal after the JSON
    round trip through the run store, or an interrupted stage could never be resumed."""
    write_pairs(tmp_path / "run")
    path = config_file(tmp_path, extra="label: {batch_size: 4}\n")
    with pytest.raises(RuntimeError, match="killed"):
        label.run(load_config(path), backend=DiesAfter(2))
    calls = []

    class Counting(FirstOptionBiased):
        def option_logprobs(self, conversations, options):
            calls.append(len(conversations))
            return super().option_logprobs(conversations, options)

    out = label.run(load_config(path), backend=Counting())
    rows = [json.loads(l) for l in (out / "preferences.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and len({r["pair_id"] for r in rows}) == 20
    assert sum(calls) == 2 * 20 - 2 * 4  # both orders of 20 pairs, less the 2 batches of 4 kept from before


def test_label_needs_pairs(tmp_path):
    with pytest.raises(InputError, match="run `cai sample` first"):
        label.run(load_config(config_file(tmp_path)), backend=FirstOptionBiased())


def test_sample_then_label_with_a_real_local_model(tmp_path, tiny_model_dir):
    path = config_file(tmp_path, tiny_model_dir, extra="sample:\n  k: 3\n  max_new_tokens: 8\nlabel:\n  batch_size: 4\n")
    cfg = load_config(path)
    out = sample.run(cfg)
    rows = [json.loads(l) for l in (out / "responses.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["responses"]) == 3 for r in rows)
    pairs = [json.loads(l) for l in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 9  # 3 prompts x C(3, 2)
    # seeded: a second run in another directory draws the same responses
    again = sample.run(load_config(path, [f"run_dir={tmp_path / 'run2'}"]))
    assert (again / "pairs.jsonl").read_text() == (out / "pairs.jsonl").read_text()

    out = label.run(cfg)
    prefs = [json.loads(l) for l in (out / "preferences.jsonl").read_text().splitlines()]
    assert prefs and all(0.5 <= r["p_chosen"] <= 1 for r in prefs)
    ds = load_from_disk(str(out / "dataset"))
    assert {"prompt", "chosen", "rejected", "p_chosen"} <= set(ds.column_names)
    assert ds[0]["prompt"][0]["role"] == "user" and ds[0]["chosen"][0]["role"] == "assistant"


def test_evaluate_labeller_on_the_paper_format(tmp_path):
    path = config_file(tmp_path)
    items = json.loads((anchor("anthropic-cai-paper/RLMadisonFewShotPrompts.json")).read_text())

    class PrefersCorrect(FirstOptionBiased):
        def option_logprobs(self, conversations, options):
            out = []
            for conv in conversations:
                a_text = conv[-2]["content"].split("(A) ")[1].split("\n(B) ")[0]
                la = (1.0 if any(a_text.strip() == c.strip() for it in items for c in it["corrects"]) else -1.0) + self.bias
                out.append(OptionScores(logprobs=(la, 0.0), missing=(False, False)))
            return out

    result = labeller.evaluate_labeller(load_config(path), anchor("anthropic-cai-paper/RLMadisonFewShotPrompts.json"), backend=PrefersCorrect(bias=3.0))
    assert result["comparisons"] == sum(len(i["corrects"]) * len(i["incorrects"]) for i in items)
    assert result["accuracy"] == 1.0  # the bias cancels over the two orders
    assert result["accuracy_correct_first"] == 1.0 and result["accuracy_correct_second"] == 0.0
