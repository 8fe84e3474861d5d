"""Several OpenAI-compatible endpoints behind one backend: balancing, cool-downs, the start-up check,
every item exactly once (cai.backends.endpoints, cai.backends.openai).

    PYTHONPATH=src python -m pytest tests/test_endpoints.py -q
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import Counter

import pytest
from openai_server import OpenAIServer, build_tiny_model

from cai.backends.endpoints import Endpoints
from cai.backends.openai import OpenAIBackend
from cai.config import OpenAIModel
from cai.errors import InputError
from cai.records import GenerationParams, user

KEY = "sk-endpoints-test"
KEY_ENV = "CAI_TEST_ENDPOINTS_KEY"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", train_steps=20)


@pytest.fixture
def servers(model_path, monkeypatch):
    """servers(n) -> n fresh test servers on their own ports (closed after the test)."""
    monkeypatch.setenv(KEY_ENV, KEY)
    started = []

    def make(n: int) -> list[OpenAIServer]:
        new = [OpenAIServer(model_path, model_name="tiny", api_key=KEY, hang_s=5).start() for _ in range(n)]
        started.extend(new)
        return new

    yield make
    for s in started:
        s.close()
        assert s.errors == []


def backend(urls, **overrides) -> OpenAIBackend:
    args = dict(model="tiny", api_key_env=KEY_ENV, max_concurrency=2, max_retries=4, timeout_s=10.0, backoff_s=0.01)
    args.update(overrides)
    return OpenAIBackend(urls, **args)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def item_of(body: dict) -> str:
    return body["messages"][-1]["content"]


# ---------------------------------------------------------------- balancing and exactly once


def test_every_item_exactly_once_in_order_with_a_faulty_and_a_killed_endpoint(servers):
    healthy, faulty, doomed = servers(3)
    for s in (healthy, faulty, doomed):
        s.latency_s = 0.02
    faulty.fail("500", None, None, "drop", None, None, "garbage", None, None, "no_content", None, None, "429", None, None, "huge")
    doomed.kill_after = 6  # dies on its 6th request, with requests in flight
    items = ["Tell me about" + " tea" * i for i in range(1, 41)]  # item i's prompt is i tokens longer
    b = backend([healthy.url, faulty.url, doomed.url], max_concurrency=3, endpoint_failures=3, endpoint_cooldown_s=60)
    try:
        got = b.generate([[user(t)] for t in items], GenerationParams(max_new_tokens=3))
    finally:
        b.close()

    answered = [item_of(body) for s in (healthy, faulty, doomed) for body in s.answered()]
    assert Counter(answered) == Counter(items)  # every item answered right exactly once, over all servers
    assert len(got) == len(items) and all(g.completion_tokens == 3 for g in got)
    lengths = [g.prompt_tokens for g in got]  # in input order: each result is its own item's
    assert all(b - a == 1 for a, b in zip(lengths, lengths[1:])), lengths
    assert doomed._killed.is_set() and len(doomed.answered()) < len(doomed.chat_requests())
    summary = {e["url"]: e for e in b.endpoints.summary()}
    assert summary[doomed.url]["cooling_down"] and summary[doomed.url]["failed"] >= 3
    faults = [x.fault for x in faulty.sent if x.fault is not None]
    assert len(faults) >= 3 and summary[faulty.url]["failed"] == len(faults)  # each fault: a failed attempt, retried
    assert b.stats.invalid_replies == sum(f in ("garbage", "no_content", "huge") for f in faults)


def test_three_endpoints_serve_at_least_2_7_times_the_requests_per_second_of_one(servers):
    trio = servers(3)
    for s in trio:
        # The server's time per request: far above the few ms of CPU a request costs here, so the
        # ratio measures the balancing even on a busy 2-core machine.
        s.latency_s = 0.25
    params = GenerationParams(max_new_tokens=1)

    def rate(urls: list[str], n: int) -> float:
        b = backend(urls, max_concurrency=2)
        try:
            b.check()
            start = time.monotonic()
            b.generate([[user(f"Tell me about {i}.")] for i in range(n)], params)
            return n / (time.monotonic() - start)
        finally:
            b.close()

    one = rate([trio[0].url], 24)  # 2 in flight: at most 8 requests/s
    three = rate([s.url for s in trio], 72)  # 6 in flight: at most 24 requests/s
    assert three / one >= 2.7, (one, three)
    counts = [len(s.chat_requests()) for s in trio]
    counts[0] -= 24
    assert all(18 <= c <= 30 for c in counts), counts  # each server got about its share
    assert all(s.max_in_flight <= 2 for s in trio)


def test_max_concurrency_is_per_endpoint(servers):
    a, b_ = servers(2)
    for s in (a, b_):
        s.latency_s = 0.05
    b = backend([a.url, b_.url], max_concurrency=3)
    try:
        b.generate([[user("Tell me about tea.")]] * 24, GenerationParams(max_new_tokens=1))
    finally:
        b.close()
    assert a.max_in_flight == 3 and b_.max_in_flight == 3
    assert len(a.chat_requests()) == len(b_.chat_requests()) == 12


def test_a_retry_goes_to_another_endpoint(servers):
    a, b_ = servers(2)
    a.fail("503")
    b = backend([a.url, b_.url], max_concurrency=1)
    try:
        [g] = b.generate([[user("Tell me about rain.")]], GenerationParams(max_new_tokens=2))
    finally:
        b.close()
    assert len(a.chat_requests()) == 1 and len(b_.chat_requests()) == 1  # not a second time to a
    assert g.completion_tokens == 2


def test_a_failing_endpoint_is_set_aside_for_its_cool_down_then_tried_again(servers):
    bad, good = servers(2)
    bad.fail(*["500"] * 3)
    b = backend([bad.url, good.url], max_concurrency=1, endpoint_failures=2, endpoint_cooldown_s=0.5)
    try:
        conv = [[user("Tell me about salt.")]]
        for _ in range(6):
            b.generate(conv, GenerationParams(max_new_tokens=1))
        assert len(bad.chat_requests()) == 2  # two failures in a row: set aside
        assert b.endpoints.summary()[0]["cooling_down"]
        time.sleep(0.6)  # cool-down over: it gets a request again (its third fault), and is set aside at once
        b.generate(conv, GenerationParams(max_new_tokens=1))
        b.generate(conv, GenerationParams(max_new_tokens=1))
        assert len(bad.chat_requests()) == 3
        time.sleep(0.6)
        b.generate(conv * 4, GenerationParams(max_new_tokens=1))  # healthy again: it takes its share
        assert len(bad.chat_requests()) >= 4 and not b.endpoints.summary()[0]["cooling_down"]
    finally:
        b.close()


def test_least_outstanding_choice_avoid_and_wait():
    pool = Endpoints(["a", "b", "c"], max_concurrency=1, failures=1, cooldown_s=0.3)
    a, b = pool.acquire(), pool.acquire()
    assert (a.url, b.url) == ("a", "b")  # fewest in flight, then the first listed
    pool.release(a, True)
    assert pool.acquire(avoid=a).url == "c"  # a and c are free: a, which just failed a retry, is avoided
    pool.release(b, False)  # b's first failure (failures=1): set aside for 0.3 s
    assert pool.acquire().url == "a"  # b is free but cooling down
    # every endpoint that is up is full: the next acquire waits, here for b's cool-down to end
    got = []
    start = time.monotonic()
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()))
    waiter.start()
    waiter.join(2)
    assert [e.url for e in got] == ["b"] and time.monotonic() - start >= 0.25


# ---------------------------------------------------------------- the start-up check


def test_an_endpoint_down_at_start_is_named_in_a_warning_and_the_others_work(servers, caplog):
    [up] = servers(1)
    down = closed_port_url()
    b = backend([down, up.url])
    try:
        with caplog.at_level(logging.WARNING):
            gens = b.generate([[user("Tell me about maps.")]] * 4, GenerationParams(max_new_tokens=2))
    finally:
        b.close()
    assert len(gens) == 4 and len(up.chat_requests()) == 4
    [warning] = [r.getMessage() for r in caplog.records if down in r.getMessage()]
    assert "did not answer GET /models at start" in warning and "ConnectError" in warning
    assert [r.path for r in up.requests][0] == "/v1/models" and up.requests[0].authorization == f"Bearer {KEY}"


def test_no_endpoint_answering_is_an_error_naming_each(servers):
    urls = [closed_port_url(), closed_port_url()]
    b = backend(urls)
    with pytest.raises(RuntimeError) as err:
        b.generate([[user("hi")]], GenerationParams(max_new_tokens=2))
    b.close()
    assert "no endpoint of model 'tiny' answered GET /models" in str(err.value)
    assert all(f"{u} (connection failed: ConnectError" in str(err.value) for u in urls)


def test_a_rejected_key_at_start_is_an_input_error(servers, monkeypatch):
    [s] = servers(1)
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    b = backend([s.url])
    with pytest.raises(InputError, match=f"HTTP 401.*check the API key in the environment variable {KEY_ENV}"):
        b.generate([[user("hi")]], GenerationParams(max_new_tokens=2))
    b.close()
    assert s.chat_requests() == []


def test_a_server_without_a_models_route_is_used_all_the_same(servers):
    [s] = servers(1)
    s.models_route = False
    b = backend(s.url)
    try:
        assert len(b.generate([[user("hi")]], GenerationParams(max_new_tokens=2))) == 1
    finally:
        b.close()


# ---------------------------------------------------------------- config


def test_config_base_url_one_or_many_and_finite_times():
    one = OpenAIModel(backend="openai", base_url="http://a:8000/v1", model="m")
    many = OpenAIModel(backend="openai", base_url=["http://a:8000/v1", "http://b:8000/v1"], model="m")
    assert (one.base_url, many.base_url) == ("http://a:8000/v1", ["http://a:8000/v1", "http://b:8000/v1"])
    assert (one.option_scoring, one.neutralize_markers, one.endpoint_failures) == ("auto", True, 3)
    bad = [
        dict(base_url=[]),
        dict(base_url=["http://a/v1", "a:8000/v1"]),
        dict(base_url=["http://a/v1", "http://a/v1/"]),
        dict(timeout_s=float("inf")),
        dict(timeout_s=float("nan")),
        dict(timeout_s=0),
        dict(endpoint_cooldown_s=float("inf")),
        dict(extra_markers=["x"]),
        dict(option_scoring="logits"),
    ]
    for fields in bad:
        with pytest.raises(ValueError):
            OpenAIModel(**{"backend": "openai", "base_url": "http://a/v1", "model": "m", **fields})
    with pytest.raises(InputError, match="finite"):
        OpenAIBackend("http://127.0.0.1:1/v1", "m", api_key_env=None, timeout_s=float("inf"))


def test_config_errors_name_the_file_key_and_line(tmp_path):
    from cai.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text(
        json.dumps({"run_dir": "r", "constitution": "c"})[:-1]
        + ', "models": {"policy": {"backend": "openai", "model": "m",\n "base_url": ["http://a/v1", "ftp://b"]}}}'
    )
    with pytest.raises(InputError) as err:
        load_config(path, check_files_exist=False)
    assert "models.policy.base_url (line 2)" in str(err.value) and "'ftp://b'" in str(err.value)
