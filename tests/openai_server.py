"""Test helpers: a tiny chat model built offline, and a real OpenAI-compatible server that runs it.

`build_tiny_model(path)` writes a tiny Llama and its tokenizer to `path` (a few seconds on a CPU,
no network). `OpenAIServer(path)` serves that model over HTTP the way vLLM or llama.cpp would:

    with OpenAIServer(build_tiny_model(tmp / "tiny")) as server:
        httpx.post(server.url + "/chat/completions", json={"model": "tiny", "messages": [...]})

The server can be told to misbehave (`server.fail("429", "drop", ...)`, one fault per request) and
records every request it received, so backend tests can check retries, headers and concurrency.
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
            question = (
                f"Which response is better?\n(A) {topic} are {adj1}.\n(B) {other} are {adj2}.\n"
                "Answer with (A) or (B)."
            )
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
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator([m["content"] for c in convs for m in c], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|pad|>", chat_template=CHAT_TEMPLATE
    )
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

FAULTS = ("429", "500", "503", "400", "401", "hang", "garbage", "no_choices", "no_usage", "drop")


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    path: str
    body: dict | None
    authorization: str | None


class OpenAIServer:
    """A real OpenAI-compatible server on 127.0.0.1 (a free port) that runs a transformers model.

    `/v1/chat/completions` applies the tokenizer's chat template (vLLM's `add_generation_prompt`,
    default true, and `continue_final_message`, default false; both true is a 400), then decodes
    token by token with full forward passes: greedy at temperature 0, else sampling with
    temperature and top_p from a generator seeded by `seed`. It stops at eos, `max_tokens` or a
    `stop` string (cut from the text, like the OpenAI API), and reports usage, finish_reason and,
    with `logprobs`, each generated token's log-softmax and `top_logprobs` alternatives.

    Test controls:
    - `fail(*faults)`: queue faults, one taken per chat request: "429" (Retry-After: 0), "500",
      "503", "400", "401", "hang" (answer nothing for `hang_s`, or until reset/close), "garbage"
      (200, not JSON), "no_choices" (200 without choices), "no_usage" (a normal answer without
      usage), "drop" (close the connection without answering).
    - `api_key`: when set, requests without `Authorization: Bearer <api_key>` get a 401 that
      echoes the key presented (some real servers do), so clients can be checked for leaks.
    - `delay_s`: each chat request first waits a random time in [0, delay_s], so requests overlap
      and finish out of order.
    - `requests` (every request received), `max_in_flight` (most chat requests handled at once),
      `errors` (exceptions inside the server), `reset()`.
    """

    def __init__(self, model_path: str | Path, model_name: str = "tiny", api_key: str | None = None, hang_s: float = 30.0):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path).eval()
        self.model_name = model_name
        self.api_key = api_key
        self.hang_s = hang_s
        self.delay_s = 0.0
        self.faults: deque[str] = deque()
        self.requests: list[Received] = []
        self.errors: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()  # guards the bookkeeping above
        self._model_lock = threading.Lock()  # one forward pass at a time
        self._stop = threading.Event()  # set by close(): ends delays and hangs at once
        self._release = threading.Event()  # set by reset(): ends the hangs of earlier tests
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
            self._httpd.shutdown()
            self._httpd.server_close()  # joins handler threads (block_on_close)
            self._thread.join()
            self._httpd = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # ------------------------------------------------------------ test controls

    def fail(self, *faults: str) -> None:
        unknown = set(faults) - set(FAULTS)
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
            self.errors.clear()
            self.max_in_flight = 0
            self.delay_s = 0.0

    def chat_requests(self) -> list[Received]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

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
        }


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
        if self.path.rstrip("/") == "/v1/models":
            self._send(*_json(200, {"object": "list", "data": [{"id": app.model_name, "object": "model", "owned_by": "cai-tests"}]}))
        else:
            self._send(*_error(404, f"no route {self.path}"))

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
        try:
            reply = self._answer(body, fault)
        except Exception as e:  # a bug in this server: say so, and let the test see it
            app.errors.append(f"{type(e).__name__}: {e}")
            reply = _error(500, f"test server error: {type(e).__name__}: {e}")
        finally:
            # Out of flight before the client can see the answer and send its next request.
            with app._lock:
                app.in_flight -= 1
        if reply is not None:
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
        if app.delay_s:
            with app._lock:
                wait = app._rng.uniform(0, app.delay_s)
            app._stop.wait(wait)
        response = app.complete(body)
        if fault == "no_usage":
            del response["usage"]
        return _json(200, response)

    def _send(self, status: int, data: bytes, headers: dict) -> None:
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timed out) before the answer


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
