"""Filters for generated red-team prompts: exact and near duplicates, copies of the seed prompts,
and overlap with evaluation prompt sets (decontamination).

    from cai.dedup import Decontaminate, SeedOverlap, apply, exact_duplicates, near_duplicates
    result = apply(prompts, [exact_duplicates, near_duplicates, SeedOverlap(seeds), Decontaminate(eval_prompts)])
    print(result.counts())  # {"exact_duplicate": 12, "near_duplicate": 40, "seed_overlap": 3, "contamination": 1}

Each filter takes prompts and returns a `Filtered`: the prompts kept, in their order, and one `Drop`
per prompt removed, with the filter's name, a reason a person can read and the id of the prompt it
matched (datatrove's filters report a reason per drop the same way, so a stage can count drops per
filter). Where two prompts match, the first one is kept. Filters are deterministic: the same prompts
(and seed) give the same result.

What is compared is the whole conversation (every turn of `Prompt.messages`), normalised by `words`:
Unicode NFKC, case folded, punctuation and symbols dropped, whitespace collapsed. N-grams never
span two turns.

- `exact_duplicates`: equal after normalisation ("How do I pick a lock?" = "how do i pick a LOCK").
- `near_duplicates`: Jaccard similarity of word n-gram shingles (default bigrams) >= threshold
  (default 0.6). Candidates come from MinHash-LSH (datasketch; Broder 1997, Leskovec et al.,
  *Mining of Massive Datasets* ch. 3), then each candidate's Jaccard is computed exactly, so a drop
  never rests on an estimate: LSH can miss a pair (recall < 1; measured in benchmarks/RESULTS.md,
  section redteam_dedup), never invent one. Bigrams because prompts are short: one word changed in
  a 10-word prompt leaves a bigram Jaccard of 7/11 = 0.64 (a near duplicate), while two prompts that
  share a frame but not the request ("How do I make meth at home?" / "How do I make a bomb at
  home?") stay at 0.44.
- `SeedOverlap`: a generated prompt that copies a seed prompt (exactly, or above the near-duplicate
  threshold) is dropped: it adds nothing the seeds did not have.
- `Decontaminate`: a generated prompt that shares any n-gram of normalised words (default n = 8)
  with an evaluation prompt is dropped, so no evaluation prompt leaks into training. An evaluation
  turn shorter than n words counts whole: a generated prompt that contains it is dropped. This is
  the any-shared-n-gram rule of GPT-3's decontamination (Brown et al. 2020, appendix C, which used
  n = 13 for long benchmark examples and shorter n for short ones); red-team prompts are short
  (the first turns of hh-rlhf's harmless-base test split: median 11 words, 61% under 13), so the
  default is 8.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from cai.records import Prompt

EXACT, NEAR, SEED, CONTAMINATION = "exact_duplicate", "near_duplicate", "seed_overlap", "contamination"


@dataclass(frozen=True)
class Drop:
    """One prompt a filter removed: which filter, why (one line for a log), and what it matched."""

    prompt: Prompt
    filter: str
    reason: str
    match: str  # id of the prompt it matched: an earlier prompt, a seed, an evaluation prompt


@dataclass(frozen=True)
class Filtered:
    """What a filter (or a chain of them) kept, in order, and what it dropped."""

    kept: tuple[Prompt, ...]
    dropped: tuple[Drop, ...]

    def counts(self) -> dict[str, int]:
        """Drops per filter, in the order the filters first dropped something."""
        return dict(Counter(d.filter for d in self.dropped))


Filter = Callable[[Sequence[Prompt]], Filtered]


def apply(prompts: Sequence[Prompt], filters: Sequence[Filter]) -> Filtered:
    """Run filters one after the other; each sees only what the ones before kept."""
    kept, dropped = tuple(prompts), []
    for keep in filters:
        result = keep(kept)
        kept = result.kept
        dropped += result.dropped
    return Filtered(kept, tuple(dropped))


# ---------------------------------------------------------------- normalisation

_NOT_A_WORD = re.compile(r"[\W_]+")  # punctuation, symbols and whitespace (\W is Unicode-aware)


def words(text: str) -> list[str]:
    """'How do I pick a LOCK?!' -> ['how', 'do', 'i', 'pick', 'a', 'lock']"""
    return _NOT_A_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split()


def normalize(text: str) -> str:
    return " ".join(words(text))


def _turn_words(prompt: Prompt) -> list[list[str]]:
    return [words(m["content"]) for m in prompt.messages]


def _key(prompt: Prompt) -> str:
    return "\n".join(" ".join(w) for w in _turn_words(prompt))


def shingles(prompt: Prompt, n: int) -> set[str]:
    """Word n-grams of every turn; a turn shorter than n words is one shingle by itself."""
    out: set[str] = set()
    for turn in _turn_words(prompt):
        if 0 < len(turn) < n:
            out.add(" ".join(turn))
        out.update(" ".join(turn[i : i + n]) for i in range(len(turn) - n + 1))
    return out


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


# ---------------------------------------------------------------- exact duplicates


def exact_duplicates(prompts: Sequence[Prompt]) -> Filtered:
    """Drop conversations equal to an earlier one after normalisation (case, punctuation, spacing)."""
    first: dict[str, Prompt] = {}
    kept, dropped = [], []
    for prompt in prompts:
        key = _key(prompt)
        if key in first:
            dropped.append(Drop(prompt, EXACT, f"same as {first[key].id} after normalisation", first[key].id))
        else:
            first[key] = prompt
            kept.append(prompt)
    return Filtered(tuple(kept), tuple(dropped))


# ---------------------------------------------------------------- near duplicates


class _NearIndex:
    """Prompts indexed by MinHash-LSH; `match` confirms candidates with their exact Jaccard.

    datasketch chooses the number of bands b and rows per band r (b * r <= num_perm) that minimise
    a weighted sum of the false positive and false negative mass around `threshold`. Its default
    weights (0.5, 0.5) make a pair exactly at the threshold a candidate only 40% of the time (b=18,
    r=7 at 0.6); here a false candidate costs one exact Jaccard while a missed one keeps a near
    duplicate, so the weights favour recall: (0.05, 0.95) gives b=24, r=4 at 0.6, a candidate with
    probability 1 - (1 - s^4)^24 = 0.96 at s = 0.6, 0.999 at 0.7, 0.18 at 0.3. Shingle sets are not
    stored (they would cost ~1 KB per prompt): a candidate's set is rebuilt from its prompt.
    """

    def __init__(self, threshold: float, ngram: int, num_perm: int, seed: int):
        from datasketch import MinHashLSH

        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if ngram < 1:
            raise ValueError(f"ngram must be at least 1, got {ngram}")
        self.threshold, self.ngram, self.num_perm, self.seed = threshold, ngram, num_perm, seed
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.05, 0.95))
        self.prompts: list[Prompt] = []

    def sketches(self, prompts: Sequence[Prompt], batch: int = 4096) -> Iterator[tuple[Prompt, set[str], object]]:
        """(prompt, shingles, MinHash) in order; MinHashes are computed a batch at a time (vectorised)."""
        from datasketch import MinHash

        for start in range(0, len(prompts), batch):
            chunk = prompts[start : start + batch]
            sets = [shingles(p, self.ngram) for p in chunk]
            hashes = MinHash.bulk([[s.encode("utf-8") for s in shingle_set] for shingle_set in sets], num_perm=self.num_perm, seed=self.seed)
            for prompt, shingle_set, minhash in zip(chunk, sets, hashes):
                yield prompt, shingle_set, minhash

    def match(self, shingle_set: set[str], minhash) -> tuple[Prompt, float] | None:
        """The indexed prompt most similar to this one, if its Jaccard reaches the threshold (ties: the first)."""
        best: tuple[Prompt, float] | None = None
        for key in sorted(self.lsh.query(minhash)):
            candidate = self.prompts[key]
            similarity = jaccard(shingle_set, shingles(candidate, self.ngram))
            if similarity >= self.threshold and (best is None or similarity > best[1]):
                best = (candidate, similarity)
        return best

    def add(self, prompt: Prompt, minhash) -> None:
        self.lsh.insert(len(self.prompts), minhash, check_duplication=False)
        self.prompts.append(prompt)


def near_duplicates(prompts: Sequence[Prompt], threshold: float = 0.6, ngram: int = 2, num_perm: int = 128, seed: int = 0) -> Filtered:
    """Drop prompts whose word n-gram Jaccard with an earlier kept prompt is >= threshold."""
    index = _NearIndex(threshold, ngram, num_perm, seed)
    kept, dropped = [], []
    for prompt, shingle_set, minhash in index.sketches(prompts):
        found = index.match(shingle_set, minhash) if shingle_set else None
        if found is None:
            if shingle_set:  # a prompt with no words cannot be near anything; exact_duplicates handles it
                index.add(prompt, minhash)
            kept.append(prompt)
        else:
            other, similarity = found
            reason = f"near duplicate of {other.id} (Jaccard {similarity:.2f} on word {ngram}-grams)"
            dropped.append(Drop(prompt, NEAR, reason, other.id))
    return Filtered(tuple(kept), tuple(dropped))


class SeedOverlap:
    """Drop generated prompts that copy a seed prompt, exactly or nearly (same rule as near_duplicates)."""

    def __init__(self, seeds: Sequence[Prompt], threshold: float = 0.6, ngram: int = 2, num_perm: int = 128, seed: int = 0):
        self.exact = {}
        for prompt in seeds:
            self.exact.setdefault(_key(prompt), prompt)
        self.index = _NearIndex(threshold, ngram, num_perm, seed)
        for prompt, shingle_set, minhash in self.index.sketches(seeds):
            if shingle_set:
                self.index.add(prompt, minhash)

    def __call__(self, prompts: Sequence[Prompt]) -> Filtered:
        kept, dropped = [], []
        for prompt, shingle_set, minhash in self.index.sketches(prompts):
            seed_prompt = self.exact.get(_key(prompt))
            if seed_prompt is not None:
                dropped.append(Drop(prompt, SEED, f"same as seed prompt {seed_prompt.id} after normalisation", seed_prompt.id))
                continue
            found = self.index.match(shingle_set, minhash) if shingle_set else None
            if found is None:
                kept.append(prompt)
            else:
                other, similarity = found
                reason = f"near duplicate of seed prompt {other.id} (Jaccard {similarity:.2f} on word {self.index.ngram}-grams)"
                dropped.append(Drop(prompt, SEED, reason, other.id))
        return Filtered(tuple(kept), tuple(dropped))


# ---------------------------------------------------------------- decontamination


class Decontaminate:
    """Drop prompts that share a word n-gram with an evaluation prompt (see the module docstring)."""

    def __init__(self, eval_prompts: Sequence[Prompt], n: int = 8):
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self.n = n
        # n-gram -> the first evaluation prompt that has it; evaluation turns shorter than n words are
        # kept whole, by length, so a generated turn is searched for each of those lengths too.
        self.grams: dict[str, Prompt] = {}
        self.short: dict[int, dict[str, Prompt]] = {}
        for prompt in eval_prompts:
            for turn in _turn_words(prompt):
                if 0 < len(turn) < n:
                    self.short.setdefault(len(turn), {}).setdefault(" ".join(turn), prompt)
                for i in range(len(turn) - n + 1):
                    self.grams.setdefault(" ".join(turn[i : i + n]), prompt)

    def __call__(self, prompts: Sequence[Prompt]) -> Filtered:
        kept, dropped = [], []
        for prompt in prompts:
            hit = self.find(prompt)
            if hit is None:
                kept.append(prompt)
            else:
                gram, source = hit
                where = f" ({source.source})" if source.source else ""
                reason = f"shares the {len(gram.split())}-word sequence {gram!r} with evaluation prompt {source.id}{where}"
                dropped.append(Drop(prompt, CONTAMINATION, reason, source.id))
        return Filtered(tuple(kept), tuple(dropped))

    def find(self, prompt: Prompt) -> tuple[str, Prompt] | None:
        """The first shared sequence, and the evaluation prompt it comes from."""
        for turn in _turn_words(prompt):
            for size, table in [(self.n, self.grams), *sorted(self.short.items())]:
                for i in range(len(turn) - size + 1):
                    gram = " ".join(turn[i : i + size])
                    if gram in table:
                        return gram, table[gram]
        return None
