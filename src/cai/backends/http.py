"""HTTP exchanges with a wall-clock deadline and a cap on the bytes read (for cai.backends.openai).

    client = make_client(headers={"Authorization": "Bearer ..."}, max_connections=16)
    reply = exchange(client, "POST", "http://localhost:8000/v1/chat/completions", {"model": ...},
                     timeout_s=30.0, max_bytes=1 << 20)

Why not httpx's own timeouts: they bound each socket operation, not the request. A server that
sends one byte every second never trips a 2 s read timeout, and holds the request for as long as
it likes. Here every socket operation of a request (connect, TLS, write, each read) waits at most
until the request's deadline, so the whole exchange ends by `timeout_s` however the server
trickles. httpx has no hook for that, so `make_client` puts a wrapper around the network backend of
httpcore's connection pools (`_DeadlineBackend`; the one place that touches httpx internals, and
tests/test_backend_openai.py's trickle test fails if it stops working).

The body is read in chunks and abandoned once it passes `max_bytes` (a Content-Length above it
is refused before reading), so a runaway 5 MB reply costs at most `max_bytes` of memory and time.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

_local = threading.local()  # .deadline: time.monotonic() by which this thread's request must end


class ReplyTooLarge(Exception):
    """The reply's body is (or says it is) longer than the cap."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: httpx.Headers
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def make_client(headers: dict[str, str], max_connections: int) -> httpx.Client:
    """An httpx client whose requests obey the deadline `exchange` sets (proxies from the
    environment included)."""
    client = httpx.Client(
        headers={**headers, "Accept-Encoding": "identity"},  # bytes read == bytes counted
        timeout=None,  # the deadline bounds every operation instead
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
    )
    for transport in [client._transport, *client._mounts.values()]:
        pool = getattr(transport, "_pool", None)
        if pool is not None:
            pool._network_backend = _DeadlineBackend(pool._network_backend)
    return client


def exchange(client: httpx.Client, method: str, url: str, payload: Any, timeout_s: float, max_bytes: int) -> Reply:
    """One request; the whole of it (connect, send, wait, read) ends within `timeout_s` seconds.

    Raises httpx.TimeoutException past the deadline, httpx.TransportError when the connection
    fails, ReplyTooLarge past `max_bytes`.
    """
    _local.deadline = time.monotonic() + timeout_s
    try:
        kwargs = {"json": payload} if payload is not None else {}
        with client.stream(method, url, **kwargs) as r:
            declared = r.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise ReplyTooLarge(f"the reply is {int(declared):,} bytes long, over the cap of {max_bytes:,}")
            body = bytearray()
            for chunk in r.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise ReplyTooLarge(f"the reply passed the cap of {max_bytes:,} bytes and was cut off")
            return Reply(r.status_code, r.headers, bytes(body))
    finally:
        _local.deadline = None


def _left(timeout: float | None, exc: type[Exception]) -> float | None:
    """The time this thread's request may still wait: the smaller of `timeout` and what is left
    before its deadline. Raises `exc` once the deadline has passed."""
    deadline = getattr(_local, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise exc("the request's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend):
        self._inner = inner

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None) -> httpcore.NetworkStream:
        timeout = _left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(self, path, timeout=None, socket_options=None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_unix_socket(path, _left(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)
