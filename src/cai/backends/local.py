"""Local backend: a transformers causal LM in this process.

Generation is a plain KV-cache decode loop over a left-padded batch, with one addition that
matters for Constitutional AI: a **prefix cache**. Every critique conversation starts with the same
few-shot examples (hundreds of tokens), and every round re-sends the turns of the round before.
Recomputing those is most of the cost on a CPU or a small GPU. So the backend keeps the KV cache of
the sequences it has already run (LRU, bounded in bytes) and, for each new row, starts from the
longest cached prefix of its tokens (what vLLM's automatic prefix caching does). A prefix shared by
the whole batch and not yet cached is computed once, not once per row.

Layout of a batch (one row per conversation, `.` = padding, masked out):

    [ . . cached KV of row i (L_i) ][ . . . uncached tokens of row i (U_i) ][ generated ... ]
      \\______ Lmax columns ______/  \\________ Umax columns ____________/

Position ids count only real tokens (0, 1, 2, ... per row), so a row's KV is the same whatever its
padding, and a cached row equals a recomputed one (tested).

Text is never markup. Prompts, answers, critiques and constitution text reach the tokenizer as plain
text: a special-token string inside a message (`<|im_end|>\n<|im_start|>assistant\n...` in a
red-team prompt, or in a policy answer quoted into a label question) becomes ordinary tokens, so it
cannot forge a turn. Only the markers the chat template itself writes are special (`ChatEncoder`).

Run on its own: `python -m cai.backends.local MODEL_DIR "a question"`.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from cai.errors import InputError
from cai.records import Conversation, Generation, GenerationParams, OptionScores


@dataclass
class BackendStats:
    """Where the tokens and the time went, for progress bars and benchmarks."""

    prompt_tokens: int = 0  # tokens of all prompts sent
    cached_tokens: int = 0  # of those, tokens whose KV came from the prefix cache
    completion_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    shared_prefix_batches: int = 0  # generate batches whose shared prefix was attended once, not per row


@dataclass
class _Entry:
    tokens: torch.Tensor  # (T,) int64
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values, each (1, H, T, D)
    nbytes: int = field(init=False)

    def __post_init__(self):
        self.nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.kv)


class PrefixCache:
    """KV caches of token sequences already computed, found by longest common prefix.

    The KV of the first n tokens of a sequence depends only on those n tokens (causal attention),
    so an entry that shares n leading tokens with a new row gives that row n tokens for free.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[int, _Entry] = OrderedDict()
        self.nbytes = 0
        self._next_id = 0

    def lookup(self, tokens: torch.Tensor, max_len: int) -> tuple[int, _Entry | None]:
        """Longest cached prefix of `tokens`, at most `max_len` long."""
        best_n, best_id = 0, None
        for eid, e in self.entries.items():
            n = min(len(e.tokens), len(tokens), max_len)
            if n <= best_n:
                continue
            diff = (e.tokens[:n] != tokens[:n]).nonzero()
            common = int(diff[0]) if len(diff) else n
            if common > best_n:
                best_n, best_id = common, eid
        if best_id is None:
            return 0, None
        self.entries.move_to_end(best_id)  # recently used
        return best_n, self.entries[best_id]

    def insert(self, tokens: torch.Tensor, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        entry = _Entry(tokens, kv)
        if entry.nbytes > self.max_bytes:
            return
        # An entry that is a prefix of the new one is now redundant.
        for eid in [i for i, e in self.entries.items() if len(e.tokens) <= len(tokens) and torch.equal(e.tokens, tokens[: len(e.tokens)])]:
            self.nbytes -= self.entries.pop(eid).nbytes
        self.entries[self._next_id] = entry
        self._next_id += 1
        self.nbytes += entry.nbytes
        while self.nbytes > self.max_bytes:
            _, old = self.entries.popitem(last=False)
            self.nbytes -= old.nbytes

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0


class _AppendLayer:
    """Wraps a KV cache layer so that decoding appends in place.

    transformers' DynamicLayer appends with torch.cat, which copies the whole cache at every decode
    step: at batch 64 with 2k-token few-shot prefixes that copy costs more than the forward pass.
    Here keys/values live in a buffer with room for the tokens still to come; `keys`/`values` are
    views of the filled part.
    """

    @staticmethod
    def install(kv_cache, extra: int) -> None:
        from transformers.cache_utils import DynamicLayer

        class AppendLayer(DynamicLayer):
            def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
                super().__init__()
                self.device, self.is_initialized, self._n = keys.device, True, keys.shape[-2]
                shape = (*keys.shape[:2], capacity, keys.shape[-1])
                self._k, self._v = keys.new_empty(shape), values.new_empty(shape)
                self._k[:, :, : self._n], self._v[:, :, : self._n] = keys, values
                self._views()

            def _views(self) -> None:
                self.keys, self.values = self._k[:, :, : self._n], self._v[:, :, : self._n]

            def update(self, key_states, value_states, *args, **kwargs):
                t = key_states.shape[-2]
                if self._n + t > self._k.shape[-2]:  # out of room: grow (rare: only past the planned length)
                    grow = max(t, self._k.shape[-2])
                    self._k = torch.cat([self._k, self._k.new_empty(*self._k.shape[:2], grow, self._k.shape[-1])], dim=2)
                    self._v = torch.cat([self._v, self._v.new_empty(*self._v.shape[:2], grow, self._v.shape[-1])], dim=2)
                self._k[:, :, self._n : self._n + t], self._v[:, :, self._n : self._n + t] = key_states, value_states
                self._n += t
                self._views()
                return self.keys, self.values

            def batch_select_indices(self, indices: torch.Tensor) -> None:
                self._k, self._v = self._k[indices], self._v[indices]
                self._views()

        kv_cache.layers = [AppendLayer(l.keys, l.values, l.keys.shape[-2] + extra) for l in kv_cache.layers]


SHARED_PREFIX_ATTENTION = "cai_shared_prefix"
SHARED_PREFIX_MIN = 64  # tokens; a shorter shared prefix is cheap enough to keep once per row


def _shared_prefix_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention over [a prefix every row of the batch shares, stored once] + [each row's own keys].

    Cascade attention (as FlashInfer and vLLM do it): the prefix's scores for the whole batch come
    from one matmul, so its keys and values are read once per step instead of once per row; the
    two parts are merged through their softmax normalisers. `kwargs["cai_prefix"]` holds the
    prefix's (keys, values) per layer, each (1, H_kv, P, D). Without it this is plain sdpa.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    prefix = kwargs.pop("cai_prefix", None)
    if prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    pk, pv = prefix[module.layer_idx]
    B, Hq, T, D = query.shape
    Hkv, S = key.shape[1], key.shape[2]
    rep = Hq // Hkv  # query head h reads KV head h // rep
    scaling = D**-0.5 if scaling is None else scaling
    q = query.reshape(B, Hkv, rep * T, D)
    s_pre = torch.einsum("bgqd,gpd->bgqp", q, pk[0]) * scaling  # (B, Hkv, rep*T, P)
    s_own = torch.matmul(q, key.transpose(-1, -2)) * scaling  # (B, Hkv, rep*T, S)
    if attention_mask is None:  # sdpa_mask skipped it: no padding; causal among the new tokens
        allowed = torch.ones(T, S, dtype=torch.bool, device=query.device).tril(S - T)[None, None]
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask
    else:  # additive
        allowed = attention_mask == 0
    allowed = allowed.expand(B, 1, T, S)[:, :, None].expand(B, 1, rep, T, S).reshape(B, 1, rep * T, S)
    s_own = s_own.masked_fill(~allowed, float("-inf"))
    m = torch.maximum(s_pre.amax(-1, keepdim=True), s_own.amax(-1, keepdim=True))
    e_pre, e_own = (s_pre - m).exp(), (s_own - m).exp()
    out = torch.einsum("bgqp,gpd->bgqd", e_pre, pv[0]) + torch.matmul(e_own, value)
    out = out / (e_pre.sum(-1, keepdim=True) + e_own.sum(-1, keepdim=True))
    return out.reshape(B, Hq, T, D).transpose(1, 2).contiguous(), None


def _register_shared_prefix_attention() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(SHARED_PREFIX_ATTENTION, _shared_prefix_attention)
    AttentionMaskInterface.register(SHARED_PREFIX_ATTENTION, sdpa_mask)


class ChatEncoder:
    """Token ids of chat conversations in which only the chat template's own markers are special.

    A tokenizer matches special-token strings anywhere in its input, so tokenizing a rendered chat
    template turns a `<|im_start|>` typed by a user into a real turn marker. Here:

    1. every special-token string inside a message (or the suffix) is replaced by a private
       placeholder, and the template is rendered: every special-token string left in the text is
       the template's own;
    2. those are swapped for sentinels (private-use characters and a random nonce, so no input can
       write one), and the placeholders back for the literal strings;
    3. the text is tokenized, in one call, by a copy of the tokenizer whose special tokens are the
       sentinels: the template's markers become the real special ids, the content's marker strings
       are plain text to it (the same ids as `split_special_tokens=True` gives).

    One call on the whole text keeps the tokenizer's own handling of splits (the boundaries at
    special tokens, lstrip/rstrip, sentencepiece's prefix space), so a conversation without special
    strings gets exactly the ids of `tokenizer(apply_chat_template(...))`; such conversations skip
    steps 1-3 and are tokenized that way. Tokenizers without a `tokenizers` backend tokenize the
    text between the template's markers piece by piece instead.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        specials = {t.content: i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        self.markers = sorted(specials, key=len, reverse=True)  # longest first, as the tokenizer matches
        # (the lookahead skips, in C, every position no marker starts at: tokenizers such as Llama 3's
        # have hundreds of special tokens)
        first = "".join(sorted({re.escape(m[0]) for m in self.markers}))
        self._marker_re = re.compile(f"(?=[{first}])(?:{'|'.join(map(re.escape, self.markers))})") if self.markers else None
        nonce = secrets.randbelow(10**12)
        # Placeholders and sentinels: private-use characters around digits, which no template trims,
        # escapes or changes case of. The nonce keeps inputs from containing one by chance or design.
        self._hidden = {m: f"\ue000{nonce}h{k}\ue001" for k, m in enumerate(self.markers)}
        self._shown = {v: m for m, v in self._hidden.items()}
        self._sentinel = {m: f"\ue000{nonce}s{specials[m]}\ue001" for m in self.markers}
        self._hidden_re = re.compile(f"\ue000{nonce}h\\d+\ue001")
        self._sentinel_re = re.compile(f"\ue000{nonce}s(\\d+)\ue001")  # (the group: the real token id)
        self._clone, self._real_id = self._sentinel_tokenizer(specials)

    def _sentinel_tokenizer(self, specials: dict[str, int]):
        """A copy of the `tokenizers` backend whose special tokens are the sentinels, and the map from
        the copy's sentinel ids to the real ids; (None, {}) where there is no such backend, or the
        copy would not give every other token its real id."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None or not self.markers:
            return None, {}
        from tokenizers import Tokenizer

        data = json.loads(backend.to_str())
        for token in data["added_tokens"]:
            if token["special"] and token["content"] in self._sentinel:
                token["content"] = self._sentinel[token["content"]]
        clone = Tokenizer.from_str(json.dumps(data))
        clone.no_padding()
        clone.no_truncation()
        real_id = {clone.token_to_id(s): specials[m] for m, s in self._sentinel.items()}
        others = [(t.content, i) for i, t in self.tokenizer.added_tokens_decoder.items() if not t.special]
        if None in real_id or any(clone.token_to_id(c) != i for c, i in others) or set(real_id) & {i for _, i in others}:
            return None, {}
        return clone, real_id

    def has_markers(self, text: str) -> bool:
        return self._marker_re is not None and self._marker_re.search(text) is not None

    def render(self, conversation: Conversation) -> str:
        """The chat template's text; an unfinished final assistant turn is continued."""
        cont = conversation[-1]["role"] == "assistant"
        return self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=not cont, continue_final_message=cont)

    def encode(self, conversation: Conversation, suffix: str = "") -> list[int]:
        """Token ids of the conversation (then `suffix`, e.g. an answer option, as plain text)."""
        if not (self.has_markers(suffix) or any(self.has_markers(m["content"]) for m in conversation)):
            return self.tokenizer(self.render(conversation) + suffix, add_special_tokens=False)["input_ids"]
        return self.encode_plain(conversation, suffix)

    def encode_plain(self, conversation: Conversation, suffix: str = "") -> list[int]:
        """Steps 1-3 of the class docstring, whether or not the text holds special strings."""
        hide = lambda text: self._marker_re.sub(lambda m: self._hidden[m.group()], text) if self._marker_re else text
        text = self.render([{**m, "content": hide(m["content"])} for m in conversation])
        if self._marker_re is not None:
            text = self._marker_re.sub(lambda m: self._sentinel[m.group()], text)  # the template's markers
        text = self._hidden_re.sub(lambda m: self._shown[m.group()], text) + suffix  # the content's: plain text
        if self._clone is not None:
            return [self._real_id.get(i, i) for i in self._clone.encode(text, add_special_tokens=False).ids]
        ids = []
        for k, piece in enumerate(self._sentinel_re.split(text)):  # text, id, text, id, ..., text
            if k % 2:
                ids.append(int(piece))
            elif piece:
                ids.extend(self.tokenizer(piece, add_special_tokens=False, split_special_tokens=True)["input_ids"])
        return ids


def _device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


class LocalBackend:
    """transformers model + tokenizer, with batched KV-cache generation and a prefix cache."""

    def __init__(self, model, tokenizer, *, name: str = "local", prefix_cache: bool = True, cache_gib: float = 2.0, batch_size: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        if tokenizer.chat_template is None:
            raise InputError(f"{name}: the tokenizer has no chat template; cai needs one to build conversations")
        self.chat = ChatEncoder(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = self._eos_ids()
        # The prefix cache splices KV tensors of full-attention layers; models with sliding-window
        # or recurrent layers run without it (outputs are the same, only slower).
        text_config = model.config.get_text_config(decoder=True)
        full_attention = all(t == "full_attention" for t in (getattr(text_config, "layer_types", None) or ["full_attention"]))
        self.cache = PrefixCache(int(cache_gib * 2**30)) if (prefix_cache and full_attention) else None
        # Shared-prefix attention for generation: plain sdpa models without softcapping or windows.
        self.shared_attention = (
            self.cache is not None
            and getattr(text_config, "_attn_implementation", None) in ("sdpa", SHARED_PREFIX_ATTENTION)
            and getattr(text_config, "attn_logit_softcapping", None) is None
            and getattr(text_config, "sliding_window", None) is None
        )
        if self.shared_attention:
            _register_shared_prefix_attention()
            model.set_attn_implementation(SHARED_PREFIX_ATTENTION)
        self.stats = BackendStats()
        self._seeds = random.Random(0)

    @classmethod
    def from_spec(cls, spec) -> LocalBackend:
        """Load from a local directory or a hub id (safetensors only; remote code only if allowed)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = _device(spec.device)
        kwargs = dict(revision=spec.revision, trust_remote_code=spec.trust_remote_code)
        try:
            tokenizer = AutoTokenizer.from_pretrained(spec.path, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=_dtype(spec.dtype, device), use_safetensors=True, **kwargs)
        except OSError as e:
            raise InputError(f"models: cannot load model {spec.path!r}: {e}") from None
        return cls(model.to(device), tokenizer, name=spec.path, prefix_cache=spec.prefix_cache, cache_gib=spec.prefix_cache_gib, batch_size=spec.batch_size)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.clear()

    # ------------------------------------------------------------ tokens

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        gen = getattr(self.model, "generation_config", None)
        extra = getattr(gen, "eos_token_id", None) if gen is not None else None
        ids |= set(extra if isinstance(extra, list) else [extra] if extra is not None else [])
        return ids

    def encode(self, conversation: Conversation) -> list[int]:
        """Token ids of a conversation; an unfinished final assistant turn is continued. Message
        contents are plain text: only the chat template's markers are special tokens."""
        return self.chat.encode(conversation)

    # ------------------------------------------------------------ prefill

    def _warm_shared_prefix(self, rows: list[list[int]]) -> int:
        """Compute the prefix all rows share once, so rows don't each recompute it. Returns its length."""
        if self.cache is None or len(rows) < 2:
            return 0
        shortest = min(len(r) for r in rows) - 1
        n = 0
        while n < shortest and all(r[n] == rows[0][n] for r in rows):
            n += 1
        if n < 16:
            return 0
        prefix = torch.tensor(rows[0][:n])
        have, _ = self.cache.lookup(prefix, n)
        if have < n:
            self._prefill([rows[0][:n]], [n - 1], logits_to_keep=1, store=True, count=False)
        return n

    def _shared_prefix(self, rows: list[list[int]], n: int) -> tuple[int, list] | None:
        """(n, per-layer (keys, values) of the first n tokens, each (1, H, n, D)) for shared-prefix
        attention, if it is on, worth it and in the cache."""
        if not self.shared_attention or n < SHARED_PREFIX_MIN:
            return None
        have, entry = self.cache.lookup(torch.tensor(rows[0][:n]), n)
        if have < n:
            return None
        return n, [(k[:, :, :n], v[:, :, :n]) for k, v in entry.kv]

    def _prefill(self, rows: list[list[int]], caps: list[int], logits_to_keep: int, store: bool = False, count: bool = True, shared=None):
        """Forward the uncached part of every row. Returns (logits, cache, mask, next positions).

        rows: token ids per row; caps[i]: most tokens of row i that may come from the cache (the
        tokens whose logits are needed must be recomputed). shared: (P, prefix KV) from
        `_shared_prefix`: the first P tokens of every row are that prefix, kept out of the returned
        cache and mask and attended through `_shared_prefix_attention`.
        """
        B = len(rows)
        tokens = [torch.tensor(r) for r in rows]
        hits = [self.cache.lookup(t, cap) if self.cache is not None else (0, None) for t, cap in zip(tokens, caps)]
        L = [n for n, _ in hits]
        P = shared[0] if shared is not None else 0
        assert all(n >= P for n in L), "the shared prefix must be in the cache"
        U = [len(r) - n for r, n in zip(rows, L)]
        Umax = max(U)

        # Cached part beyond the shared prefix, left-padded: (B, H, Cmax, D) per layer.
        C = [n - P for n in L]
        Cmax = max(C)
        cache_mask = torch.zeros(B, Cmax, dtype=torch.long)
        past = None
        if Cmax > 0:
            past = []
            ref = next(e for (_, e), c in zip(hits, C) if c > 0).kv
            for layer, (k0, v0) in enumerate(ref):
                k = k0.new_zeros(B, k0.shape[1], Cmax, k0.shape[3])
                v = v0.new_zeros(B, v0.shape[1], Cmax, v0.shape[3])
                for i, ((n, e), c) in enumerate(zip(hits, C)):
                    if c:
                        k[i, :, Cmax - c :] = e.kv[layer][0][0, :, P:n]
                        v[i, :, Cmax - c :] = e.kv[layer][1][0, :, P:n]
                past.append((k, v))
            for i, c in enumerate(C):
                cache_mask[i, Cmax - c :] = 1

        # Uncached part, left-padded: (B, Umax).
        ids = torch.full((B, Umax), self.pad_id, dtype=torch.long)
        new_mask = torch.zeros(B, Umax, dtype=torch.long)
        pos = torch.zeros(B, Umax, dtype=torch.long)
        for i, (t, n, u) in enumerate(zip(tokens, L, U)):
            ids[i, Umax - u :] = t[n:]
            new_mask[i, Umax - u :] = 1
            pos[i, Umax - u :] = torch.arange(n, n + u)

        from transformers import DynamicCache

        kv_cache = DynamicCache(ddp_cache_data=past) if past is not None else DynamicCache(config=self.model.config)
        mask = torch.cat([cache_mask, new_mask], dim=1)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=pos.to(self.device),
            cache=kv_cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
            **({"cai_prefix": shared[1]} if shared is not None else {}),
        )
        if count:
            self.stats.prompt_tokens += sum(len(r) for r in rows)
            self.stats.cached_tokens += sum(L)
        if store:
            for i in range(B):
                self._store(out.cache, mask, i, tokens[i], shared)
        next_pos = torch.tensor([len(r) for r in rows])
        return out.logits.float(), out.cache, mask, next_pos

    def _store(self, kv_cache, mask: torch.Tensor, row: int, tokens: torch.Tensor, shared=None) -> None:
        """Keep row `row`'s KV (padding removed; the shared prefix put back in front) under its
        tokens. `tokens` are the tokens fed so far."""
        if self.cache is None:
            return
        idx = mask[row].nonzero().squeeze(1).to(self.device)
        P = shared[0] if shared is not None else 0
        assert P + len(idx) == len(tokens), (P, len(idx), len(tokens))
        # (indexing with a tensor copies, so the entry does not hold the batch's cache alive)
        kv = [(layer.keys[row : row + 1, :, idx], layer.values[row : row + 1, :, idx]) for layer in kv_cache.layers]
        if shared is not None:
            kv = [(torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)) for (pk, pv), (k, v) in zip(shared[1], kv)]
        self.cache.insert(tokens, kv)

    # ------------------------------------------------------------ generate

    @torch.inference_mode()
    def generate(self, conversations: list[Conversation], params: GenerationParams, seeds: list[int] | None = None) -> list[Generation]:
        if seeds is None:
            seeds = [self._seeds.randrange(2**63) for _ in conversations]
        rows = [self.encode(c) for c in conversations]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths batch together
        out: list[Generation | None] = [None] * len(rows)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for i, g in zip(chunk, self._generate_batch([rows[i] for i in chunk], params, [seeds[i] for i in chunk])):
                out[i] = g
        return out  # type: ignore[return-value]

    def _generate_batch(self, rows: list[list[int]], params: GenerationParams, seeds: list[int]) -> list[Generation]:
        t0 = time.perf_counter()
        shared = self._shared_prefix(rows, self._warm_shared_prefix(rows))
        extra = {"cai_prefix": shared[1]} if shared is not None else {}
        self.stats.shared_prefix_batches += shared is not None
        logits, kv_cache, mask, pos = self._prefill(rows, [len(r) - 1 for r in rows], logits_to_keep=1, shared=shared)
        if self.cache is not None:  # (full-attention layers only)
            _AppendLayer.install(kv_cache, params.max_new_tokens)
        t1 = time.perf_counter()
        self.stats.prefill_s += t1 - t0

        B = len(rows)
        generators = [torch.Generator().manual_seed(s % 2**63) for s in seeds]
        generated: list[list[int]] = [[] for _ in range(B)]
        results: list[Generation | None] = [None] * B
        active = list(range(B))  # original row index of each row still in the batch
        fed = [torch.tensor(r) for r in rows]  # tokens whose KV is in the cache, per row
        max_stop = max((len(s) for s in params.stop), default=0)

        for step in range(params.max_new_tokens):
            next_ids = _sample(logits[:, -1], params, [generators[i] for i in active])  # (b,)
            keep = []
            for j, i in enumerate(active):
                tok = int(next_ids[j])
                done_reason = None
                if tok in self.eos_ids:
                    done_reason = "stop"
                else:
                    generated[i].append(tok)
                    if max_stop and _hits_stop(self.tokenizer, generated[i], params.stop, max_stop):
                        done_reason = "stop"
                    elif step == params.max_new_tokens - 1:
                        done_reason = "length"
                if done_reason is None:
                    keep.append(j)
                else:
                    results[i] = self._finish(rows[i], generated[i], done_reason, params.stop)
                    self._store(kv_cache, mask, j, fed[i], shared)
            if not keep:
                break
            if len(keep) < len(active):  # drop finished rows from the batch
                kv_cache.batch_select_indices(torch.tensor(keep, device=self.device))
                mask, pos, next_ids = mask[keep], pos[keep], next_ids[keep]
                active = [active[j] for j in keep]
            for j, i in enumerate(active):
                fed[i] = torch.cat([fed[i], next_ids[j : j + 1]])
            mask = torch.cat([mask, torch.ones(len(active), 1, dtype=mask.dtype)], dim=1)
            out = self.model(
                input_ids=next_ids[:, None].to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=pos[:, None].to(self.device),
                cache=kv_cache,
                use_cache=True,
                **extra,
            )
            logits = out.logits.float()
            pos = pos + 1
        self.stats.decode_s += time.perf_counter() - t1
        return results  # type: ignore[return-value]

    def _finish(self, prompt: list[int], gen: list[int], reason: str, stop: tuple[str, ...]) -> Generation:
        text = self.tokenizer.decode(gen, skip_special_tokens=True)
        for s in stop:
            cut = text.find(s)
            if cut >= 0:
                text = text[:cut]
        self.stats.completion_tokens += len(gen)
        return Generation(text=text, prompt_tokens=len(prompt), completion_tokens=len(gen), finish_reason=reason)

    # ------------------------------------------------------------ option log-probs

    @torch.inference_mode()
    def option_logprobs(self, conversations: list[Conversation], options: list[str]) -> list[OptionScores]:
        """log p(option | conversation), summed over the option's tokens. One forward pass per batch."""
        prompts = [self.encode(c) for c in conversations]
        out: list[OptionScores] = []
        per_batch = max(1, self.batch_size // len(options))
        for start in range(0, len(prompts), per_batch):
            out.extend(self._score_batch(prompts[start : start + per_batch], conversations[start : start + per_batch], options))
        return out

    def _option_ids(self, conversation: Conversation, prompt: list[int], option: str) -> list[int]:
        # Tokenize in context: "...The answer is: (A)" may not split like " (A)" alone.
        full = self.chat.encode(conversation, suffix=option)
        if full[: len(prompt)] == prompt and len(full) > len(prompt):
            return full[len(prompt) :]
        return self.tokenizer(option, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def _score_batch(self, prompts: list[list[int]], conversations: list[Conversation], options: list[str]) -> list[OptionScores]:
        """Each prompt is computed once, not once per option: one forward pass over the prompts (whose
        last logits score every option's first token) and, for options of more than one token, one
        short pass over the options' other tokens on top of the prompts' KV cache. A prefix all
        prompts share (few-shot examples) is attended once for the batch, as in generation."""
        shared = self._shared_prefix(prompts, self._warm_shared_prefix(prompts))
        extra = {"cai_prefix": shared[1]} if shared is not None else {}
        K = len(options)
        ids = [[self._option_ids(conv, p, opt) for opt in options] for p, conv in zip(prompts, conversations)]
        t0 = time.perf_counter()
        logits, kv_cache, mask, pos = self._prefill(prompts, [len(p) - 1 for p in prompts], logits_to_keep=1, shared=shared)
        first = torch.log_softmax(logits[:, -1], dim=-1)  # (B, V): predicts every option's first token
        scores = [[float(first[i, ids[i][k][0]]) for k in range(K)] for i in range(len(prompts))]
        longest = max(len(x) for row in ids for x in row)
        if longest > 1:
            # Row i*K+k continues prompt i with option k's tokens but its last (right-padded), and
            # its logits predict option k's tokens after the first.
            B, M = len(prompts) * K, longest - 1
            kv_cache.batch_repeat_interleave(K)
            cont = torch.full((B, M), self.pad_id, dtype=torch.long)
            cont_mask = torch.zeros(B, M, dtype=torch.long)
            for r in range(B):
                x = ids[r // K][r % K][:-1]
                cont[r, : len(x)] = torch.tensor(x, dtype=torch.long)
                cont_mask[r, : len(x)] = 1
            positions = pos.repeat_interleave(K)[:, None] + torch.arange(M)[None, :]
            out = self.model(
                input_ids=cont.to(self.device),
                attention_mask=torch.cat([mask.repeat_interleave(K, dim=0), cont_mask], dim=1).to(self.device),
                position_ids=positions.to(self.device),
                cache=kv_cache,
                use_cache=True,
                **extra,
            )
            logp = torch.log_softmax(out.logits.float(), dim=-1)  # (B, M, V)
            for r in range(B):
                rest = ids[r // K][r % K][1:]
                if rest:
                    target = torch.tensor(rest, device=logp.device)
                    scores[r // K][r % K] += float(logp[r, : len(rest)].gather(1, target[:, None]).sum())
        self.stats.prefill_s += time.perf_counter() - t0
        return [OptionScores(logprobs=tuple(row), missing=(False,) * K) for row in scores]


def _sample(logits: torch.Tensor, params: GenerationParams, generators: list[torch.Generator]) -> torch.Tensor:
    """Next token per row. (b, V) -> (b,). Greedy at temperature 0; else temperature + top-p."""
    if params.temperature == 0:
        return logits.argmax(-1).cpu()
    probs = torch.softmax(logits / params.temperature, dim=-1).cpu()
    if params.top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > params.top_p  # keep the smallest set with mass >= top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(generators)])


def _hits_stop(tokenizer, gen: list[int], stop: tuple[str, ...], max_stop: int) -> bool:
    # Decode only the tail: a stop string can only have just appeared at the end.
    tail = tokenizer.decode(gen[-(max_stop + 8) :], skip_special_tokens=True)
    return any(s in tail for s in stop)


if __name__ == "__main__":  # python -m cai.backends.local MODEL_DIR "question"
    from cai.config import LocalModel

    backend = LocalBackend.from_spec(LocalModel(backend="local", path=sys.argv[1]))
    print(backend.generate([[{"role": "user", "content": sys.argv[2]}]], GenerationParams(max_new_tokens=128))[0].text)
