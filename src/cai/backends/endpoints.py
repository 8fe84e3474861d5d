"""Several servers behind one backend: fewest requests in flight first, failing ones set aside.

    endpoints = Endpoints(["http://a:8000/v1", "http://b:8000/v1"], max_concurrency=16, failures=3, cooldown_s=30)
    e = endpoints.acquire()            # blocks until some endpoint has a free slot
    ...                                # send the request to e.url
    endpoints.release(e, ok=True)      # ok=False: a failed attempt; None: neither (a 4xx)

Which endpoint: among those not cooling down, one with a free slot (at most `max_concurrency`
requests in flight per endpoint), with the fewest in flight, then the fewest sent, then the first
listed. A retry passes the endpoint that just failed as `avoid`, and goes elsewhere where another
endpoint is up. After `failures` failed attempts in a row an endpoint is set aside for
`cooldown_s` seconds; then it gets requests again, and its next failure sets it aside again (a
success resets the count). While every endpoint is cooling down, requests go to the one whose
cool-down ends first instead of waiting: retries are already spaced by their backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class Endpoint:
    url: str  # base URL, up to /v1
    in_flight: int = 0
    sent: int = 0  # attempts, all time
    failed: int = 0  # failed attempts, all time
    streak: int = 0  # failed attempts in a row
    down_until: float = 0.0  # time.monotonic() at which its cool-down ends
    last_error: str = ""


class Endpoints:
    def __init__(self, urls: list[str], max_concurrency: int, failures: int, cooldown_s: float):
        self.all = [Endpoint(u) for u in urls]
        self.max_concurrency = max_concurrency
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._cond = threading.Condition()

    def acquire(self, avoid: Endpoint | None = None) -> Endpoint:
        """A slot on the best endpoint (see the module docstring); blocks until one is free."""
        with self._cond:
            while True:
                now = time.monotonic()
                up = [e for e in self.all if e.down_until <= now] or [min(self.all, key=lambda e: e.down_until)]
                if avoid in up and len(up) > 1:
                    up.remove(avoid)
                free = [e for e in up if e.in_flight < self.max_concurrency]
                if free:
                    best = min(free, key=lambda e: (e.in_flight, e.sent))  # (min keeps the first of equals)
                    best.in_flight += 1
                    best.sent += 1
                    return best
                back = [e.down_until - now for e in self.all if e.down_until > now]
                self._cond.wait(min(back) if back else None)  # a release, or a cool-down's end

    def release(self, endpoint: Endpoint, ok: bool | None, error: str = "") -> None:
        with self._cond:
            endpoint.in_flight -= 1
            if ok:
                endpoint.streak = 0
            elif ok is False:
                endpoint.failed += 1
                endpoint.streak += 1
                endpoint.last_error = error
                if endpoint.streak >= self.failures and len(self.all) > 1:  # (a lone endpoint has no stand-in)
                    self._set_aside(endpoint, f"{endpoint.streak} failed attempts in a row (last: {error})")
            self._cond.notify_all()

    def set_aside(self, endpoint: Endpoint, reason: str) -> None:
        """Take an endpoint out of rotation for a cool-down (e.g. it did not answer at start)."""
        with self._cond:
            endpoint.streak = max(endpoint.streak, self.failures)
            endpoint.last_error = reason
            self._set_aside(endpoint, reason)
            self._cond.notify_all()

    def _set_aside(self, endpoint: Endpoint, reason: str) -> None:
        endpoint.down_until = time.monotonic() + self.cooldown_s
        others = sum(e.down_until <= time.monotonic() for e in self.all)
        log.warning("%s set aside for %g s: %s; %d other endpoint(s) up", endpoint.url, self.cooldown_s, reason, others)

    def summary(self) -> list[dict]:
        """Per endpoint: attempts sent and failed, and whether it is cooling down now (for metrics)."""
        with self._cond:
            now = time.monotonic()
            return [{"url": e.url, "sent": e.sent, "failed": e.failed, "cooling_down": e.down_until > now, "last_error": e.last_error} for e in self.all]
