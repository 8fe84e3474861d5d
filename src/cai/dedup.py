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
  (default 0.6). Candidates come from MinHash-LSH (Broder 1997; Leskovec et al., *Mining of Massive
  Datasets* ch. 3), written here in numpy (see the section below), then each candidate's Jaccard is
  computed exactly, so a drop never rests on an estimate: LSH can miss a pair (recall < 1; measured
  in benchmarks/RESULTS.md, section redteam_dedup), never invent one. Bigrams because prompts are short: one word changed in
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

import functools
import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cai.records import Prompt

EXACT, NEAR, SEED, CONTAMINATION, LENGTH, SCORE = "exact_duplicate", "near_duplicate", "seed_overlap", "contamination", "length", "harm_score"


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


class LengthBounds:
    """Keep prompts whose request has between `min_words` and `max_words` words (normalised words)."""

    def __init__(self, min_words: int, max_words: int):
        self.min_words, self.max_words = min_words, max_words

    def __call__(self, prompts: Sequence[Prompt]) -> Filtered:
        kept, dropped = [], []
        for p in prompts:
            n = len(words(p.text))
            if self.min_words <= n <= self.max_words:
                kept.append(p)
            else:
                dropped.append(Drop(p, LENGTH, f"{n} words, outside {self.min_words}..{self.max_words}", ""))
        return Filtered(tuple(kept), tuple(dropped))


class MinScore:
    """Keep prompts whose score (by id) is at least `threshold`: e.g. a judge's p(harmful)."""

    def __init__(self, scores: dict[str, float], threshold: float, name: str = SCORE):
        self.scores, self.threshold, self.name = scores, threshold, name

    def __call__(self, prompts: Sequence[Prompt]) -> Filtered:
        kept, dropped = [], []
        for p in prompts:
            if self.scores[p.id] >= self.threshold:
                kept.append(p)
            else:
                dropped.append(Drop(p, self.name, f"score {self.scores[p.id]:.3f} < {self.threshold:g}", ""))
        return Filtered(tuple(kept), tuple(dropped))


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


def jaccard(a: set, b: set) -> float:
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


# ---------------------------------------------------------------- near duplicates: MinHash-LSH in numpy
#
# All prompts are known up front, so the LSH index is built in one go with array operations instead
# of a hash table per band. datasketch's MinHashLSH, used the same way, keeps a Python set per bucket
# per band: ~10 KB an indexed prompt, 1.28 GB above the prompts for 200k synthetic ones, against
# 0.46 GB here, and 2-10x the time (benchmarks/RESULTS.md, section redteam_dedup).
#
# 1. Shingles -> stable 64-bit hashes (blake2b: Python's hash() differs between processes).
# 2. MinHash signature (n, num_perm): for permutation k, the minimum over a prompt's shingles x of
#    h_k(x) = ((a_k * x + b_k) mod 2^64) >> 32, x the low 32 bits of the shingle hash and a_k (odd),
#    b_k random 64-bit numbers from `seed` (multiply-add-shift, a strongly universal family;
#    Dietzfelbinger 1996). P[two prompts agree on k] estimates their Jaccard (Broder 1997).
# 3. Bands: the signature is cut into b bands of r rows; prompts whose band agrees in any band are
#    candidates, with probability 1 - (1 - s^r)^b at Jaccard s (Leskovec et al., Mining of Massive
#    Datasets, ch. 3). (b, r) minimise 0.05 * false-positive area + 0.95 * false-negative area around
#    the threshold, the optimisation datasketch does, weighted for recall here: a false candidate
#    costs a comparison, a missed one keeps a near duplicate. At 0.6 and 128 permutations: b = 24,
#    r = 4; a pair is a candidate with probability 0.96 at s = 0.6, 0.999 at 0.7, 0.18 at 0.3
#    (datasketch's default weights give 0.40 at 0.6).
# 4. Candidates are screened by their MinHash estimate of the Jaccard (fraction of agreeing
#    permutations, vectorised): kept if within _MARGIN of the threshold. Its standard deviation at
#    s = 0.6 with 128 permutations is sqrt(0.6 * 0.4 / 128) = 0.043, so a margin of 0.15 (3.5 of
#    them) screens out a pair at the threshold with probability ~2e-4.
# 5. The survivors get their exact Jaccard: a drop never rests on an estimate.

_MARGIN = 0.15


@dataclass(frozen=True)
class _Sketches:
    """Shingle hashes and MinHash signatures of a list of prompts."""

    flat: np.ndarray  # (total shingles,) uint64: prompt i's shingle hashes are flat[offsets[i]:offsets[i + 1]]
    offsets: np.ndarray  # (n + 1,) int64
    signatures: np.ndarray  # (n, num_perm) uint32; meaningless for a prompt with no shingles
    band_keys: np.ndarray  # (n, bands) uint64: one hash of each band's r signature values

    def shingle_set(self, i: int) -> set[int]:
        return set(self.flat[self.offsets[i] : self.offsets[i + 1]].tolist())

    def has_shingles(self) -> np.ndarray:
        return np.diff(self.offsets) > 0  # (n,) bool


@dataclass(frozen=True)
class _LSH:
    threshold: float
    ngram: int
    num_perm: int
    seed: int

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.ngram < 1:
            raise ValueError(f"ngram must be at least 1, got {self.ngram}")
        if self.num_perm < 1:
            raise ValueError(f"num_perm must be at least 1, got {self.num_perm}")

    def sketch(self, prompts: Sequence[Prompt], batch: int = 1024) -> _Sketches:
        rng = np.random.default_rng(self.seed)
        a = rng.integers(0, 2**64, size=self.num_perm, dtype=np.uint64) | np.uint64(1)  # (P,) odd multipliers
        b = rng.integers(0, 2**64, size=self.num_perm, dtype=np.uint64)  # (P,)
        signatures = np.full((len(prompts), self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        flats, sizes = [], []
        for start in range(0, len(prompts), batch):  # a batch at a time: (shingles, P) values stay small
            hashes = [sorted({_stable_hash(s) for s in shingles(p, self.ngram)}) for p in prompts[start : start + batch]]
            flat = np.fromiter((x for h in hashes for x in h), dtype=np.uint64)  # (m,) this batch's shingles
            size = np.fromiter(map(len, hashes), dtype=np.int64, count=len(hashes))
            flats.append(flat)
            sizes.append(size)
            if flat.size == 0:
                continue
            x = flat & np.uint64(0xFFFFFFFF)
            values = ((x[:, None] * a + b) >> np.uint64(32)).astype(np.uint32)  # (m, P); uint64 arithmetic wraps: mod 2^64
            rows = np.flatnonzero(size)  # reduceat needs non-empty groups
            starts = (np.cumsum(size) - size)[rows]
            signatures[start + rows] = np.minimum.reduceat(values, starts, axis=0)
        offsets = np.zeros(len(prompts) + 1, dtype=np.int64)
        np.cumsum(np.concatenate(sizes) if sizes else [], out=offsets[1:])

        bands, rows_per_band = _bands_rows(self.threshold, self.num_perm)
        weights = rng.integers(0, 2**64, size=rows_per_band, dtype=np.uint64) | np.uint64(1)  # (r,)
        band_keys = np.empty((len(prompts), bands), dtype=np.uint64)  # (n, bands): a linear hash of each band, mod 2^64
        for k in range(bands):
            band = signatures[:, k * rows_per_band : (k + 1) * rows_per_band].astype(np.uint64)  # (n, r)
            band_keys[:, k] = (band * weights).sum(axis=1, dtype=np.uint64)
        flat = np.concatenate(flats) if flats else np.empty(0, np.uint64)
        return _Sketches(flat, offsets, signatures, band_keys)

    def screen(self, left: _Sketches, right: _Sketches, i: np.ndarray, j: np.ndarray, chunk: int = 1 << 15) -> np.ndarray:
        """(pairs,) bool: MinHash estimate of Jaccard(left[i], right[j]) within _MARGIN of the threshold."""
        need = int(np.ceil((self.threshold - _MARGIN) * self.num_perm))
        keep = np.empty(i.size, dtype=bool)
        for s in range(0, i.size, chunk):
            agree = np.count_nonzero(left.signatures[i[s : s + chunk]] == right.signatures[j[s : s + chunk]], axis=1)
            keep[s : s + chunk] = agree >= need
        return keep


@functools.lru_cache
def _bands_rows(threshold: float, num_perm: int, fp_weight: float = 0.05, fn_weight: float = 0.95) -> tuple[int, int]:
    """(b, r) with b * r <= num_perm minimising fp_weight * FP area + fn_weight * FN area of the S-curve."""
    s = np.linspace(0, 1, 2001)
    below = s < threshold
    best = (np.inf, 1, num_perm)
    for r in range(1, num_perm + 1):
        for b in range(1, num_perm // r + 1):
            p = 1 - (1 - s**r) ** b  # P[candidate] at Jaccard s
            error = fp_weight * np.trapezoid(p[below], s[below]) + fn_weight * np.trapezoid(1 - p[~below], s[~below])
            best = min(best, (error, b, r))
    return best[1], best[2]


@functools.lru_cache(maxsize=1 << 17)  # frequent shingles ("how do", "can you") are hashed once
def _stable_hash(shingle: str) -> int:
    return int.from_bytes(hashlib.blake2b(shingle.encode("utf-8"), digest_size=8).digest(), "little")


def _pairs_within(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i, j), i < j, of rows with equal keys, as two index arrays."""
    # int32 indices: a band of 200k prompts can hold millions of pairs.
    order = np.argsort(keys, kind="stable").astype(np.int32)
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]).astype(np.int32)  # first row of each run of equal keys
    lengths = np.diff(np.r_[starts, keys.size]).astype(np.int32)
    rank = np.arange(keys.size, dtype=np.int32) - np.repeat(starts, lengths)  # position within its run
    partners = np.repeat(lengths, lengths) - rank - 1  # rows after it in its run
    left = np.repeat(np.arange(keys.size, dtype=np.int32), partners)  # (pairs,) sorted position of each pair's first row
    offset = np.arange(left.size, dtype=np.int32) - np.repeat((np.cumsum(partners) - partners).astype(np.int32), partners)
    a, b = order[left], order[left + 1 + offset]  # the second row is 1 + offset places after the first
    return np.minimum(a, b), np.maximum(a, b)


def _pairs_across(left_keys: np.ndarray, right_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i, j) with left_keys[i] == right_keys[j]."""
    order = np.argsort(left_keys, kind="stable")
    sorted_keys = left_keys[order]
    lo = np.searchsorted(sorted_keys, right_keys, side="left")
    counts = np.searchsorted(sorted_keys, right_keys, side="right") - lo  # (len(right),) matches of each right row
    j = np.repeat(np.arange(right_keys.size), counts)
    step = np.arange(j.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return order[np.repeat(lo, counts) + step], j


def _unique_pairs(i: list[np.ndarray], j: list[np.ndarray], n_left: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-band pairs, drop repeats (a close pair collides in many bands), sort by (j, i)."""
    if not i:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    key = np.unique(np.concatenate(j).astype(np.int64) * max(n_left, 1) + np.concatenate(i))
    return key % max(n_left, 1), key // max(n_left, 1)


def near_duplicates(prompts: Sequence[Prompt], threshold: float = 0.6, ngram: int = 2, num_perm: int = 128, seed: int = 0) -> Filtered:
    """Drop prompts whose word n-gram Jaccard with an earlier kept prompt is >= threshold.

    The reason names the most similar kept prompt (ties: the first). A prompt whose shingles equal an
    earlier prompt's is decided with it: dropped with the same match, or dropped as a copy (Jaccard 1)
    of the earlier one if that was kept. Prompts with no words are kept (exact_duplicates sees them).
    """
    lsh = _LSH(threshold, ngram, num_perm, seed)
    sk = lsh.sketch(prompts)
    n = len(prompts)
    # Prompts with identical shingle sets would form one big run in every band: keep one representative.
    first_of: dict[bytes, int] = {}
    representative = np.arange(n)
    for i in np.flatnonzero(sk.has_shingles()).tolist():
        representative[i] = first_of.setdefault(sk.flat[sk.offsets[i] : sk.offsets[i + 1]].tobytes(), i)
    rows = np.flatnonzero(sk.has_shingles() & (representative == np.arange(n)))  # (m,) representatives

    lefts, rights = [], []
    for band in range(sk.band_keys.shape[1]):
        i, j = _pairs_within(sk.band_keys[rows, band])
        i, j = rows[i], rows[j]  # i < j: rows is sorted
        keep = lsh.screen(sk, sk, i, j)
        lefts.append(i[keep])
        rights.append(j[keep])
    earlier, later = _unique_pairs(lefts, rights, n)  # sorted by later, then earlier
    bounds = np.searchsorted(later, np.arange(n + 1))  # candidates of prompt v: earlier[bounds[v]:bounds[v + 1]]

    kept_mask = np.zeros(n, dtype=bool)
    match: dict[int, tuple[int, float]] = {}
    for v in range(n):
        rep = int(representative[v])
        if rep != v:  # same shingles as an earlier prompt
            match[v] = match[rep] if rep in match else (rep, 1.0)
            continue
        best = None
        shingle_set = sk.shingle_set(v)
        for u in earlier[bounds[v] : bounds[v + 1]].tolist():
            if kept_mask[u]:
                similarity = jaccard(shingle_set, sk.shingle_set(u))
                if similarity >= threshold and (best is None or similarity > best[1]):
                    best = (u, similarity)
        if best is None:
            kept_mask[v] = True
        else:
            match[v] = best

    kept = tuple(p for v, p in enumerate(prompts) if v not in match)
    dropped = tuple(
        Drop(prompts[v], NEAR, f"near duplicate of {prompts[u].id} (Jaccard {s:.2f} on word {ngram}-grams)", prompts[u].id)
        for v, (u, s) in sorted(match.items())
    )
    return Filtered(kept, dropped)


class SeedOverlap:
    """Drop generated prompts that copy a seed prompt, exactly or nearly (same rule as near_duplicates)."""

    def __init__(self, seeds: Sequence[Prompt], threshold: float = 0.6, ngram: int = 2, num_perm: int = 128, seed: int = 0):
        self.seeds = tuple(seeds)
        self.exact: dict[str, Prompt] = {}
        for prompt in self.seeds:
            self.exact.setdefault(_key(prompt), prompt)
        self.lsh = _LSH(threshold, ngram, num_perm, seed)
        self.sketches = self.lsh.sketch(self.seeds)

    def __call__(self, prompts: Sequence[Prompt]) -> Filtered:
        sk = self.lsh.sketch(prompts)
        seed_rows = np.flatnonzero(self.sketches.has_shingles())
        rows = np.flatnonzero(sk.has_shingles())
        lefts, rights = [], []
        for band in range(sk.band_keys.shape[1]):
            i, j = _pairs_across(self.sketches.band_keys[seed_rows, band], sk.band_keys[rows, band])
            i, j = seed_rows[i], rows[j]
            keep = self.lsh.screen(self.sketches, sk, i, j)
            lefts.append(i[keep])
            rights.append(j[keep])
        seed_of, prompt_of = _unique_pairs(lefts, rights, len(self.seeds))  # sorted by prompt, then seed
        bounds = np.searchsorted(prompt_of, np.arange(len(prompts) + 1))

        kept, dropped = [], []
        for v, prompt in enumerate(prompts):
            copied = self.exact.get(_key(prompt))
            if copied is not None:
                dropped.append(Drop(prompt, SEED, f"same as seed prompt {copied.id} after normalisation", copied.id))
                continue
            best = None
            shingle_set = sk.shingle_set(v)
            for u in seed_of[bounds[v] : bounds[v + 1]].tolist():
                similarity = jaccard(shingle_set, self.sketches.shingle_set(u))
                if similarity >= self.lsh.threshold and (best is None or similarity > best[1]):
                    best = (u, similarity)
            if best is None:
                kept.append(prompt)
            else:
                other = self.seeds[best[0]]
                reason = f"near duplicate of seed prompt {other.id} (Jaccard {best[1]:.2f} on word {self.lsh.ngram}-grams)"
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
