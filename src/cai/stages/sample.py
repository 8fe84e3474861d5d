"""RL-CAI, step 1: the policy answers every prompt k times; the answers are paired.

    cai sample CONFIG [--set sample.k=4]

The policy is `sample.model` if given, else the run's SFT model (`<run_dir>/sft/model`) if the
SFT stage has produced it, else `models.policy`. Response j of a prompt is sampled at
`sample.temperatures[j % len]` with a seed fixed by (seed, prompt, j), so a resumed run draws the
same responses. Waves run breadth-first (every prompt's response 0, then response 1, ...); every
batch is committed to the run store before the next starts.

Output: `<run_dir>/sample/responses.jsonl` (one row per prompt) and `<run_dir>/sample/pairs.jsonl`
(one row per pair: pair_id, prompt_id, kind, prompt, response_a, response_b).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cai.backends import Backend, make_backend
from cai.config import Config, LocalModel, save_config
from cai.errors import InputError
from cai.prompts import load_prompts
from cai.records import GenerationParams, Prompt, user
from cai.stages.common import begin, file_hash, finish, identity, stable_seed
from cai.store import RunStore, write_jsonl

STAGE = "sample"


def sampling_model(config: Config):
    """The model spec to sample from (see the module docstring), and where it came from."""
    if config.sample.model is not None:
        return config.sample.model, "sample.model"
    sft = Path(config.run_dir) / "sft" / "model"
    if (sft / "config.json").is_file():
        base = config.models.policy
        kw = {"dtype": base.dtype, "device": base.device} if isinstance(base, LocalModel) else {}
        return LocalModel(backend="local", path=str(sft), **kw), "the run's SFT model"
    if config.models.policy is None:
        raise InputError("models.policy: the sample stage needs a model (models.policy or sample.model)")
    return config.models.policy, "models.policy"


def pair_indices(k: int, how: str) -> list[tuple[int, int]]:
    if how == "all":
        return list(itertools.combinations(range(k), 2))
    return [(i, i + 1) for i in range(0, k - 1, 2)]


def fingerprint(config: Config, spec) -> dict[str, Any]:
    srcs = {"red_team": config.prompts.red_team, "helpful": config.prompts.helpful if config.sample.helpful else None}
    return {
        "seed": config.seed,
        "prompts": {k: (v.model_dump() | {"sha256": file_hash(v.path)}) if v else None for k, v in srcs.items()},
        "model": identity(spec) | ({"sha256": file_hash(spec.path)} if spec.backend == "local" and Path(spec.path).exists() else {}),
        "sample": {k: v for k, v in identity(config.sample).items() if k != "model"},
    }


def load_all_prompts(config: Config) -> list[tuple[str, Prompt]]:
    """(kind, prompt) for the red-team prompts and, if enabled, the helpful ones."""
    out = []
    for kind, src in (("red_team", config.prompts.red_team), ("helpful", config.prompts.helpful if config.sample.helpful else None)):
        if src is not None:
            ps = load_prompts(src)
            print(f"[sample] {kind}: {ps.summary()}")
            out += [(kind, p) for p in ps.prompts]
    if not out:
        raise InputError("prompts: the sample stage needs prompts.red_team and/or prompts.helpful")
    return out


def run(config: Config, backend: Backend | None = None, force: bool = False) -> Path:
    spec, origin = sampling_model(config)
    prompts = load_all_prompts(config)
    # The same text can be both a red-team and a helpful prompt; it is sampled once per kind.
    keys = [f"{kind}:{p.id}" for kind, p in prompts]
    out_dir = Path(config.run_dir) / STAGE
    store = RunStore(config.run_dir)
    fp = fingerprint(config, spec)
    if begin(store, STAGE, fp, force):
        print(f"[sample] already complete: {out_dir / 'pairs.jsonl'}")
        store.close()
        return out_dir
    save_config(config, Path(config.run_dir) / "config.yaml")
    print(f"[sample] policy: {getattr(spec, 'path', None) or spec.model} ({origin})")

    s = config.sample
    done = store.items(STAGE)
    responses: dict[str, list[dict]] = {key: done.get(key, {}).get("responses", []) for key in keys}
    resumed = sum(len(r) for r in responses.values())
    if resumed:
        print(f"[sample] resuming: {resumed} of {len(keys) * s.k} responses already done")
    own_backend = backend is None
    backend = backend or make_backend(spec)
    bar = tqdm(total=len(keys) * s.k, initial=resumed, unit="response", desc="sample", dynamic_ncols=True)
    t0, tokens = time.perf_counter(), 0
    try:
        for j in range(s.k):  # wave j: every prompt's j-th response
            temperature = s.temperatures[j % len(s.temperatures)]
            params = GenerationParams(max_new_tokens=s.max_new_tokens, temperature=temperature, top_p=s.top_p, stop=tuple(s.stop))
            wave = [i for i, key in enumerate(keys) if len(responses[key]) == j]
            wave.sort(key=lambda i: len(prompts[i][1].text))
            for start in range(0, len(wave), s.batch_size):
                batch = wave[start : start + s.batch_size]
                seeds = [stable_seed(config.seed, keys[i], j) for i in batch]
                gens = backend.generate([[user(prompts[i][1].text)] for i in batch], params, seeds=seeds)
                for i, seed, g in zip(batch, seeds, gens):
                    responses[keys[i]] = responses[keys[i]] + [{"text": g.text, "temperature": temperature, "seed": seed, "finish_reason": g.finish_reason}]
                    tokens += g.completion_tokens
                store.put(STAGE, [(keys[i], i, {"responses": responses[keys[i]]}) for i in batch])
                bar.set_postfix_str(f"{tokens / (time.perf_counter() - t0):.0f} tok/s")
                bar.update(len(batch))
    finally:
        bar.close()
        if own_backend:
            backend.close()

    rows, pairs = [], []
    for key, (kind, p) in zip(keys, prompts):
        rows.append({"key": key, "prompt_id": p.id, "kind": kind, "prompt": p.text, "responses": responses[key]})
        for a, b in pair_indices(s.k, s.pairs):
            pairs.append(
                {
                    "pair_id": f"{key}:{a}-{b}",
                    "prompt_id": p.id,
                    "kind": kind,
                    "prompt": p.text,
                    "response_a": responses[key][a]["text"],
                    "response_b": responses[key][b]["text"],
                }
            )
    write_jsonl(out_dir / "responses.jsonl", rows)
    write_jsonl(out_dir / "pairs.jsonl", pairs)
    identical = sum(p["response_a"] == p["response_b"] for p in pairs)
    finish(store, STAGE, fp, {"prompts": len(rows), "pairs": len(pairs), "identical_pairs": identical})
    store.close()
    print(f"[sample] {len(rows)} prompts x {s.k} responses -> {len(pairs)} pairs ({identical} with identical responses) -> {out_dir / 'pairs.jsonl'}")
    return out_dir
