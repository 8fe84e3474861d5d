"""Test helpers: a tiny chat model built offline, and a real OpenAI-compatible server that runs it.

`build_tiny_model(path)` writes a tiny Llama and its tokenizer to `path` (a few seconds on a CPU,
no network). `OpenAIServer(path)` serves that model over HTTP the way vLLM or llama.cpp would:

    with OpenAIServer(build_tiny_model(tmp / "tiny")) as server:
        httpx.post(server.url + "/chat/completions", json={"model": "tiny", "messages": [...]})

The server can be told to misbehave (`server.fail("429", "drop", ...)`, one fault per request) and
records every request it received and every reply it sent, so backend tests can check retries,
headers, concurrency and that every item was answered exactly once.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

# ---------------------------------------------------------------- the tiny model

CHAT_TEMPLATE = (
    # ChatML. The {% generation %} markers let TRL compute an assistant-only loss.
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_TOPICS = ["tea", "rivers", "chess", "bread", "birds", "rain", "maps", "music", "gardens", "trains", "salt", "clocks"]
_ADJECTIVES = ["calm", "old", "useful", "bright", "quiet", "simple", "strange", "warm", "small", "kind"]


def tiny_corpus(n: int = 400, seed: int = 0) -> list[list[dict[str, str]]]:
    """Conversations the tiny model is trained on: small talk, and multiple-choice questions
    answered "The answer is (A)." or "(B)". No word is a bare " A" or " B", so the answer letters
    are single tokens ("A", "B") that only appear after "(".
    """
    rng = random.Random(seed)
    convs = []
    for i in range(n):
        topic, other = rng.sample(_TOPICS, 2)
        adj1, adj2 = rng.sample(_ADJECTIVES, 2)
        if i % 2 == 0:
            letter = rng.choice("AB")
            question = f"Which response is better?\n(A) {topic} are {adj1}.\n(B) {other} are {adj2}.\nAnswer with (A) or (B)."
            convs.append([{"role": "user", "content": question}, {"role": "assistant", "content": f"The answer is ({letter})."}])
        else:
            convs.append(
                [
                    {"role": "user", "content": f"Tell me about {topic}."},
                    {"role": "assistant", "content": f"The {topic} are {adj1} and {adj2}. I like {topic} and {other}."},
                ]
            )
    return convs


def build_tiny_model(path: str | Path, train_steps: int = 120, seed: int = 0) -> Path:
    """Write a tiny Llama chat model and its tokenizer to `path`; return `path`.

    Tokenizer: byte-level BPE (every string is encodable) trained with `tokenizers` on
    `tiny_corpus()`, ChatML template, eos `<|im_end|>`, pad `<|pad|>`. Model: LlamaForCausalLM,
    hidden 32, 2 layers, 4 heads, randomly initialised and then trained for `train_steps` steps
    (about 2 s on a CPU) so that it answers "The answer is (" with A or B; `train_steps=0` keeps
    it random.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    convs = tiny_corpus(seed=seed)
    specials = ["<|pad|>", "<|im_start|>", "<|im_end|>"]

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator([m["content"] for c in convs for m in c], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|pad|>", chat_template=CHAT_TEMPLATE)
    tokenizer.save_pretrained(path)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small gain nothing from threads, and lose a lot on a busy machine
    try:
        _train(model, tokenizer, convs, train_steps, seed)
    finally:
        torch.set_num_threads(threads)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    return path


def _train(model, tokenizer, convs: list, steps: int, seed: int) -> None:
    """Next-token loss on whole templated conversations (padding masked), batches of 32, AdamW."""
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in convs]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # (N, T)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(texts), (32,), generator=gen)
        loss = model(input_ids=batch["input_ids"][idx], attention_mask=batch["attention_mask"][idx], labels=labels[idx]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


# ---------------------------------------------------------------- the server

FAULTS = (
    # transport and status faults
    "429", "500", "503", "400", "401", "hang", "drop", "trickle",
    # 200 replies that do not hold what was asked for
    "garbage", "no_choices", "no_usage", "no_content", "null_content", "content_number", "content_bad_parts",
    "nan_logprobs", "no_token", "huge", "huge_stream", "bad_usage",
    # 200 replies in forms the API allows
    "content_parts", "filtered", "refusal",
)  # fmt: skip


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    path: str
    body: dict | None
    authorization: str | None


@dataclass(frozen=True)
class Sent:
    """One reply as the server sent it: status 0 when it closed the connection without one."""

    path: str
    status: int
    fault: str | None
    body: dict | None  # the request's body


class OpenAIServer:
    """A real OpenAI-compatible server on 127.0.0.1 (a free port) that runs a transformers model.

    `/v1/chat/completions` applies the tokenizer's chat template (vLLM's `add_generation_prompt`,
    default true, and `continue_final_message`, default false; both true is a 400), then decodes
    token by token with full forward passes: greedy at temperature 0, else sampling with
    temperature and top_p from a generator seeded by `seed`. It stops at eos, `max_tokens` or a
    `stop` string (cut from the text, like the OpenAI API), and reports usage, finish_reason and,
    with `logprobs`, each generated token's log-softmax and `top_logprobs` alternatives.

    vLLM's extensions: `prompt_logprobs: k` returns, per prompt token, its log-prob given the tokens
    before it (and the top k), as vLLM does: a top-level list with null for the first token, then
    {"<token id>": {"logprob", "rank", "decoded_token"}}; `return_token_ids: true` returns
    `prompt_token_ids`. `prompt_logprobs_mode` = "yes" (like vLLM), "reject" (a 400 naming the
    argument, like the OpenAI API) or "ignore" (like servers that drop unknown arguments).
    `GET /v1/models` lists the model (404 if `models_route` is False).

    Test controls:
    - `fail(*faults)`: queue faults, one taken per chat request:
      "429" (Retry-After: 0), "500", "503", "400", "401"; "hang" (answer nothing for `hang_s`, or
      until reset/close); "drop" (close the connection without answering); "trickle" (the right
      reply, one byte every `trickle_s`);
      "garbage" (200, not JSON); "no_choices"; "no_usage" (a right answer without usage);
      "no_content" / "null_content" (message without content / content null, finish_reason stop);
      "content_number" (content 42); "content_bad_parts" (content [1, 2]); "nan_logprobs" (every
      log-prob NaN); "no_token" (log-prob entries without `token`); "huge" (a 5 MB reply, with its
      Content-Length); "huge_stream" (up to 50 MB without a Content-Length, until the client hangs
      up; `stream_bytes_sent` says how much went out); "bad_usage" (usage counts as strings);
      "content_parts" (the right text as a list of two text parts and a reasoning part);
      "filtered" (content null, finish_reason content_filter); "refusal" (content null, a
      `refusal` string).
    - `api_key`: when set, requests without `Authorization: Bearer <api_key>` get a 401 that
      echoes the key presented (some real servers do), so clients can be checked for leaks.
    - `delay_s`: each chat request first waits a random time in [0, delay_s], so requests overlap
      and finish out of order; `latency_s`: a fixed wait per chat request.
    - `kill()`: stop at once, like a killed process: requests in flight get no answer, new
      connections are refused. `kill_after = n`: kill when the n-th chat request arrives.
    - `requests` (every request received), `sent` (every reply, see `Sent`), `max_in_flight`
      (most chat requests handled at once), `errors` (exceptions inside the server), `reset()`.
    """

    def __init__(self, model_path: str | Path, model_name: str = "tiny", api_key: str | None = None, hang_s: float = 30.0):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path).eval()
        self.model_name = model_name
        self.api_key = api_key
        self.hang_s = hang_s
        self.trickle_s = 0.05
        self.delay_s = 0.0
        self.latency_s = 0.0
        self.prompt_logprobs_mode = "yes"
        self.models_route = True
        self.kill_after: int | None = None
        self.stream_bytes_sent = 0
        self.faults: deque[str] = deque()
        self.requests: list[Received] = []
        self.sent: list[Sent] = []
        self.errors: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()  # guards the bookkeeping above
        self._model_lock = threading.Lock()  # one forward pass at a time
        self._stop = threading.Event()  # set by close(): ends delays and hangs at once
        self._release = threading.Event()  # set by reset(): ends the hangs of earlier tests
        self._killed = threading.Event()
        self._rng = random.Random(0)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> OpenAIServer:
        handler = type("Handler", (_Handler,), {"app": self})
        self._httpd = _HTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="openai-test-server", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and join every handler thread."""
        self._stop.set()
        self._release.set()
        if self._httpd is not None:
            if not self._killed.is_set():
                self._httpd.shutdown()
            self._httpd.server_close()  # joins handler threads (block_on_close)
            self._thread.join()
            self._httpd = None

    def kill(self) -> None:
        """Stop like a killed process: no more answers, the port closed. Callable from any thread."""
        if self._killed.is_set():
            return
        self._killed.set()
        self._stop.set()
        self._release.set()

        def stop_listening():
            self._httpd.shutdown()
            self._httpd.socket.close()

        threading.Thread(target=stop_listening, name="openai-test-server-kill").start()

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # ------------------------------------------------------------ test controls

    def fail(self, *faults: str | None) -> None:
        """Queue faults, one per chat request in arrival order (None: that request goes right)."""
        unknown = set(faults) - set(FAULTS) - {None}
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        with self._lock:
            self.faults.extend(faults)

    def reset(self) -> None:
        """Forget faults, requests and counters; end hangs left over from earlier requests."""
        self._release.set()
        deadline = time.monotonic() + 5
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            self._release = threading.Event()
            self.faults.clear()
            self.requests.clear()
            self.sent.clear()
            self.errors.clear()
            self.max_in_flight = 0
            self.delay_s = 0.0
            self.latency_s = 0.0
            self.prompt_logprobs_mode = "yes"
            self.models_route = True
            self.stream_bytes_sent = 0

    def chat_requests(self) -> list[Received]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def answered(self) -> list[dict]:
        """Bodies of the chat requests that got a right 200 answer (no fault)."""
        return [s.body for s in self.sent if s.path.endswith("/chat/completions") and s.status == 200 and s.fault is None]

    # ------------------------------------------------------------ the model

    def prompt_ids(self, messages: list[dict], add_generation_prompt: bool, continue_final_message: bool) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def complete(self, req: dict) -> dict:
        """A chat completion response for a validated request."""
        tok = self.tokenizer
        cont = bool(req.get("continue_final_message", False))
        prompt = self.prompt_ids(req["messages"], bool(req.get("add_generation_prompt", True)), cont)
        max_tokens = int(req.get("max_tokens") or 64)
        temperature = float(req.get("temperature", 1.0))
        top_p = float(req.get("top_p", 1.0))
        stop = req.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        want_logprobs = bool(req.get("logprobs"))
        k = int(req.get("top_logprobs") or 0)
        seed = req.get("seed")
        gen = torch.Generator().manual_seed(int(seed) if seed is not None else random.randrange(2**31))

        ids, out, content = list(prompt), [], []
        text, finish = "", "length"
        with self._model_lock, torch.no_grad():
            for _ in range(max_tokens):
                logits = self.model(torch.tensor([ids])).logits[0, -1].float()  # (V,)
                logprobs = torch.log_softmax(logits, -1)  # what the API reports: before temperature
                if temperature == 0:
                    next_id = int(logits.argmax())
                else:
                    next_id = _sample(logits / temperature, top_p, gen)
                ids.append(next_id)
                if want_logprobs:
                    top = logprobs.topk(k)
                    alternatives = [{"token": tok.decode([int(i)]), "logprob": float(v)} for v, i in zip(top.values, top.indices)]
                    content.append({"token": tok.decode([next_id]), "logprob": float(logprobs[next_id]), "top_logprobs": alternatives})
                if next_id == tok.eos_token_id:
                    finish = "stop"
                    break
                out.append(next_id)
                text = tok.decode(out, skip_special_tokens=True)
                cuts = [text.index(s) for s in stop if s in text]
                if cuts:
                    text, finish = text[: min(cuts)], "stop"
                    break
        n_generated = len(ids) - len(prompt)
        extra = {}
        if req.get("return_token_ids"):
            extra["prompt_token_ids"] = prompt
        if req.get("prompt_logprobs") is not None:
            extra["prompt_logprobs"] = self.prompt_logprobs(prompt, int(req["prompt_logprobs"]))
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": 0,
            "model": self.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": {"content": content} if want_logprobs else None,
                }
            ],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": n_generated, "total_tokens": len(ids)},
            **extra,
        }

    def prompt_logprobs(self, prompt: list[int], k: int) -> list[dict | None]:
        """vLLM's prompt_logprobs: null, then per token j its log p given tokens < j, and the top k."""
        with self._model_lock, torch.no_grad():
            logp = torch.log_softmax(self.model(torch.tensor([prompt])).logits[0].float(), -1)  # (T, V)
        out: list[dict | None] = [None]
        for j in range(1, len(prompt)):
            row = logp[j - 1]
            wanted = [prompt[j]] + (row.topk(k).indices.tolist() if k else [])
            out.append({str(t): {"logprob": float(row[t]), "rank": int((row > row[t]).sum()) + 1, "decoded_token": self.tokenizer.decode([t])} for t in wanted})
        return out


def _sample(logits: torch.Tensor, top_p: float, gen: torch.Generator) -> int:
    """One token from softmax(logits) restricted to the smallest set of top tokens with mass >= top_p."""
    probs = torch.softmax(logits, -1)  # (V,)
    sorted_p, order = probs.sort(descending=True)
    keep = sorted_p.cumsum(0) - sorted_p < top_p  # the first token is always kept
    probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False  # handler threads are joined on close, not abandoned
    block_on_close = True


Reply = tuple[int, bytes, dict]  # (status, body, headers)


def _json(status: int, body: dict, headers: dict | None = None) -> Reply:
    return status, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}


def _error(status: int, message: str, headers: dict | None = None) -> Reply:
    kinds = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError", 429: "RateLimitError"}
    return _json(status, {"error": {"message": message, "type": kinds.get(status, "InternalServerError"), "code": status}}, headers)


class _Handler(BaseHTTPRequestHandler):
    app: OpenAIServer
    timeout = 10  # a connection that sends nothing cannot hold a thread forever
    # HTTP/1.0 (the default): one request per connection, so a handler thread ends with its request.

    def log_message(self, format, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        app = self.app
        with app._lock:
            app.requests.append(Received(self.path, None, self.headers.get("Authorization")))
        auth = self.headers.get("Authorization")
        if self.path.rstrip("/") != "/v1/models" or not app.models_route:
            self._send(*_error(404, f"no route {self.path}"))
        elif app.api_key is not None and auth != f"Bearer {app.api_key}":
            self._send(*_error(401, f"Incorrect API key provided: {(auth or '').removeprefix('Bearer ')!r}"))
        else:
            self._send(*_json(200, {"object": "list", "data": [{"id": app.model_name, "object": "model", "owned_by": "cai-tests"}]}))

    def do_POST(self) -> None:
        app = self.app
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with app._lock:
            app.requests.append(Received(self.path, body, self.headers.get("Authorization")))
            fault = app.faults.popleft() if app.faults else None
            app.in_flight += 1
            app.max_in_flight = max(app.max_in_flight, app.in_flight)
            n_chat = len(app.chat_requests())
        if app.kill_after is not None and n_chat >= app.kill_after:
            app.kill()
        try:
            reply = self._answer(body, fault)
        except Exception as e:  # a bug in this server: say so, and let the test see it
            app.errors.append(f"{type(e).__name__}: {e}")
            reply = _error(500, f"test server error: {type(e).__name__}: {e}")
        finally:
            # Out of flight before the client can see the answer and send its next request.
            with app._lock:
                app.in_flight -= 1
        if app._killed.is_set():
            reply = None  # a killed process answers nothing
        with app._lock:
            app.sent.append(Sent(self.path, reply[0] if reply is not None else 0, fault, body))
        if reply is None:
            return
        if fault == "trickle":
            self._send_slowly(*reply)
        elif fault == "huge_stream":
            self._send_until_hung_up(reply[0], reply[2])
        else:
            self._send(*reply)

    def _answer(self, body: dict | None, fault: str | None) -> Reply | None:
        """The reply to a POST, or None to close the connection without one."""
        app = self.app
        if fault == "drop":
            return None
        if fault == "hang":
            release = app._release
            release.wait(app.hang_s)
            return None
        if fault == "garbage":
            return 200, b"<html>502 Bad Gateway</html>{not json", {"Content-Type": "application/json"}
        if fault == "no_choices":
            return _json(200, {"object": "chat.completion", "model": app.model_name})
        if fault == "429":
            return _error(429, "Rate limit reached, slow down", headers={"Retry-After": "0"})
        if fault in ("500", "503", "400", "401"):
            return _error(int(fault), f"injected fault {fault}")

        if self.path.rstrip("/") != "/v1/chat/completions":
            return _error(404, f"no route {self.path}")
        auth = self.headers.get("Authorization")
        if app.api_key is not None and auth != f"Bearer {app.api_key}":
            presented = (auth or "").removeprefix("Bearer ")
            return _error(401, f"Incorrect API key provided: {presented!r}")
        problem = _validate(body, app.model_name)
        if problem:
            return problem
        asks_prompt = body.get("prompt_logprobs") is not None or body.get("return_token_ids")
        if asks_prompt and app.prompt_logprobs_mode == "reject":
            arg = "prompt_logprobs" if body.get("prompt_logprobs") is not None else "return_token_ids"
            return _error(400, f"Unrecognized request argument supplied: {arg}")
        if asks_prompt and app.prompt_logprobs_mode == "ignore":
            body = {k: v for k, v in body.items() if k not in ("prompt_logprobs", "return_token_ids")}
        wait = app.latency_s
        if app.delay_s:
            with app._lock:
                wait += app._rng.uniform(0, app.delay_s)
        if wait:
            app._stop.wait(wait)
        if fault == "huge":
            return _json(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 5_000_000}, "finish_reason": "length"}]})
        response = app.complete(body)
        _spoil(response, fault)
        return _json(200, response)

    def _send_slowly(self, status: int, data: bytes, headers: dict) -> None:
        """The whole reply, one byte every trickle_s, until done, released or hung up on."""
        try:
            self._head(status, headers, len(data))
            for i in range(len(data)):
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                if self.app._release.wait(self.app.trickle_s):
                    return
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send_until_hung_up(self, status: int, headers: dict) -> None:
        """A body without Content-Length (it ends when the connection closes): 64 KiB chunks, up to
        50 MB, until the client hangs up."""
        chunk = b'{"choices": [{"message": {"content": "' + b"x" * 65536
        try:
            self._head(status, headers)
            while self.app.stream_bytes_sent < 50_000_000 and not self.app._release.is_set():
                self.wfile.write(chunk)
                self.app.stream_bytes_sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _head(self, status: int, headers: dict, length: int | None = None) -> None:
        """Status line and headers (with Content-Length when the body's length is given)."""
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(self, status: int, data: bytes, headers: dict) -> None:
        try:
            self._head(status, headers, len(data))
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timed out) before the answer


def _spoil(response: dict, fault: str | None) -> None:
    """Turn a right response into the 200 reply a fault asks for (in place)."""
    message, choice = response["choices"][0]["message"], response["choices"][0]
    logprobs = (choice.get("logprobs") or {}).get("content") or []
    if fault == "no_usage":
        del response["usage"]
    elif fault == "bad_usage":
        response["usage"] = {k: str(v) for k, v in response["usage"].items()}
    elif fault == "no_content":
        del message["content"]
    elif fault == "null_content":
        message["content"] = None
    elif fault == "content_number":
        message["content"] = 42
    elif fault == "content_bad_parts":
        message["content"] = [1, 2]
    elif fault == "content_parts":
        text = message["content"]
        message["content"] = [
            {"type": "reasoning", "reasoning": "(not part of the answer)"},
            {"type": "text", "text": text[: len(text) // 2]},
            {"type": "text", "text": text[len(text) // 2 :]},
        ]
    elif fault == "filtered":
        message["content"], choice["finish_reason"] = None, "content_filter"
    elif fault == "refusal":
        message["content"], message["refusal"] = None, "I can't help with that."
    elif fault == "nan_logprobs":
        for pos in logprobs:
            pos["logprob"] = float("nan")
            for alt in pos["top_logprobs"]:
                alt["logprob"] = float("nan")
        for entry in response.get("prompt_logprobs") or []:
            for item in (entry or {}).values():
                item["logprob"] = float("nan")
    elif fault == "no_token":
        for pos in logprobs:
            del pos["token"]


def _validate(body: dict | None, model_name: str) -> Reply | None:
    """A 4xx reply for a request vLLM would reject, else None."""
    if not isinstance(body, dict):
        return _error(400, "request body is not a JSON object")
    if body.get("model") != model_name:
        return _error(404, f"The model `{body.get('model')}` does not exist.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _error(400, "messages must be a non-empty list")
    if body.get("max_tokens") is not None and int(body["max_tokens"]) < 1:
        return _error(400, f"max_tokens must be at least 1, got {body['max_tokens']}")
    if body.get("continue_final_message") and body.get("add_generation_prompt", True):
        return _error(400, "Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
    if body.get("continue_final_message") and messages[-1].get("role") != "assistant":
        return _error(400, "continue_final_message needs a final assistant message")
    if float(body.get("temperature", 1.0)) < 0:
        return _error(400, "temperature must be >= 0")
    return None
