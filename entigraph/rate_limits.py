"""How many requests go to a rate-limited server at once: found, not fixed.

A provider limits requests and tokens a minute and answers what is over with 429. Sending at a
fixed `generator.max_in_flight` either wastes the quota (too few) or spends it on rejections
(too many). `AdaptiveConcurrency` holds the requests in flight between 1 and that ceiling:

- pacing by the quota headers: each answer's `x-ratelimit-remaining-*` says what the server had
  left when it admitted that request, and its `x-ratelimit-reset-*` how fast that refills.
  From the latest such report, less what was sent since (a request's cost: 1 request, and the
  tokens a request has averaged) plus the refill since, a new request waits until the quota
  would cover it, so requests arrive about as fast as the quota allows (OpenAI's headers;
  servers without them get the window alone);
- a window: each success widens it by 1/window (one more per window's worth of successes); a
  429 narrows it by DECREASE, at most once per latency (a burst of 429s from one overshoot is
  one signal).
"""
from __future__ import annotations

import asyncio
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional

DECREASE = 0.7
# The quota kept in hand above one request's average cost: requests vary in size. It costs no
# throughput once the quota is the limit (a constant reserve, not a rate).
MARGIN = 0.2
MAX_PAUSE_S = 10.0  # a pause is re-planned at least this often
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
KINDS = ("requests", "tokens")


def duration_s(text: Optional[str]) -> Optional[float]:
    """OpenAI's reset durations ("20ms", "1.5s", "6m0s") in seconds; None if absent or odd."""
    if not text:
        return None
    parts = _DURATION.findall(text)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != text.strip():
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def _number(headers: Any, name: str) -> Optional[float]:
    try:
        return float(headers.get(name))
    except (TypeError, ValueError):
        return None


@dataclass
class Ticket:
    """One request's place: the number of requests sent before it, and when it was sent."""
    sent_before: int
    started: float


@dataclass
class Quota:
    """One kind of quota as last reported: `left` when the server admitted the request sent at
    `sent_at` with `sent_before` requests before it; refilling at `rate` a second. The refill
    is counted from `at`, when the answer came (the admission was earlier, by up to a latency:
    counting from the answer keeps the estimate on the safe side, at no cost in throughput once
    the quota is the limit)."""
    left: float
    rate: float
    at: float
    sent_before: int
    sent_at: float


class AdaptiveConcurrency:
    def __init__(self, ceiling: int):
        self.ceiling = ceiling
        # One request first: its answer tells the quota and a request's cost before the rest
        # go (else a first wave of `ceiling` requests could overrun a quota blind); then all.
        self.window = 1.0
        self._opened = False
        self.in_flight = 0
        self.sent = 0
        self.latency_s = 0.0  # a moving average of successful requests' durations
        self.tokens_per_request = 0.0  # a moving average of prompt + completion tokens
        self._quotas: dict[str, Quota] = {}
        self._last_cut = float("-inf")
        self._changed: Optional[asyncio.Event] = None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Ticket]:
        """Hold one place in the window for one request (an attempt)."""
        ticket = await self._enter()
        try:
            yield ticket
        finally:
            self.in_flight -= 1
            if self._changed is not None:
                self._changed.set()

    def _cost(self, kind: str) -> float:
        return (1.0 if kind == "requests" else self.tokens_per_request) * (1 + MARGIN)

    def _pause_s(self) -> float:
        """How long until the quotas, as estimated now, cover one more request."""
        now, pause = time.monotonic(), 0.0
        for kind, quota in self._quotas.items():
            cost = self._cost(kind)
            estimate = (quota.left + quota.rate * (now - quota.at)
                        - cost * (self.sent - quota.sent_before - 1))
            if estimate < cost:
                pause = max(pause, (cost - estimate) / quota.rate)
        return min(pause, MAX_PAUSE_S)

    async def _enter(self) -> Ticket:
        if self._changed is None:
            self._changed = asyncio.Event()
        while True:
            pause = self._pause_s()
            if pause > 0:
                await asyncio.sleep(pause)
            elif self.in_flight < max(1, int(self.window)):
                self.in_flight += 1
                self.sent += 1
                return Ticket(self.sent - 1, time.monotonic())
            else:
                self._changed.clear()
                await self._changed.wait()

    def succeeded(self, ticket: Ticket, tokens: int, headers: Any) -> None:
        seconds = time.monotonic() - ticket.started
        self.latency_s = seconds if not self.latency_s else 0.9 * self.latency_s + 0.1 * seconds
        self.tokens_per_request = (tokens if not self.tokens_per_request
                                   else 0.9 * self.tokens_per_request + 0.1 * tokens)
        if not self._opened:
            self._opened, self.window = True, float(self.ceiling)
        self.window = min(self.ceiling, self.window + 1.0 / self.window)
        self._report(ticket, headers)

    def rejected(self, ticket: Ticket, headers: Any) -> None:
        """A 429: narrow the window (once per latency) and take in the quota headers."""
        now = time.monotonic()
        if now - self._last_cut >= self.latency_s:
            self.window = max(1.0, self.window * DECREASE)
            self._last_cut = now
        self._report(ticket, headers)

    def _report(self, ticket: Ticket, headers: Any) -> None:
        """Keep the newest report of each quota: a request's headers describe the quota left
        just after the server admitted (and charged) or refused it."""
        if headers is None:
            return
        for kind in KINDS:
            limit = _number(headers, f"x-ratelimit-limit-{kind}")
            left = _number(headers, f"x-ratelimit-remaining-{kind}")
            refill_s = duration_s(headers.get(f"x-ratelimit-reset-{kind}"))
            if None in (limit, left, refill_s):
                continue
            old = self._quotas.get(kind)
            if old is not None and old.sent_at > ticket.started:
                continue  # a newer report is already in
            rate = max(limit - left, 1.0) / max(refill_s, 1e-3)
            self._quotas[kind] = Quota(left, rate, time.monotonic(), ticket.sent_before,
                                       ticket.started)
