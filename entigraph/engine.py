"""Runs generator calls: bounded concurrency, the call store, token and dollar budgets, progress.

Calls are planned by key, and a call's request (its prompt, with the document's text) is built
only when it is sent, so a million planned calls cost their keys, and a resume with nothing left
to do only looks keys up. `max_in_flight` workers take the calls in the order given; a call
already in the store is never made again. A reply counts once the group commit has made it
durable. When a budget is reached no new call starts; calls in flight finish and are kept (they
are paid for). A backend that keeps failing stops the run instead of burning through every
request.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from tqdm.auto import tqdm

from entigraph.call_store import CallStore, GroupCommit, error_entry, reply_entry
from entigraph.llm import Backend, ChatRequest, ChatResult, GeneratorError

log = logging.getLogger(__name__)
MAX_CONSECUTIVE_FAILURES = 20


@dataclass
class Prices:
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


@dataclass
class Budget:
    """Stop starting calls once the generated tokens or the dollars spent reach these."""
    output_tokens: Optional[int] = None
    dollars: Optional[float] = None


@dataclass
class Spend:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    dollars: float = 0.0
    failures: int = 0

    def add(self, result: ChatResult, prices: Prices) -> None:
        self.calls += 1
        self.input_tokens += result.input_tokens
        self.output_tokens += result.output_tokens
        self.dollars += prices.cost(result.input_tokens, result.output_tokens)


@dataclass(frozen=True)
class PlannedCall:
    """A call known by its store key (and document); its request is built only when sent."""
    key: str
    doc: str
    build: Callable[[], ChatRequest]


class Engine:
    def __init__(self, backend: Optional[Backend], store: CallStore, max_in_flight: int,
                 prices: Prices = Prices(), budget: Budget = Budget()):
        self.backend = backend  # None: collect requests for a batch file instead of calling
        self.store = store
        self.commit = GroupCommit(store)
        self.max_in_flight = max_in_flight
        self.prices = prices
        self.budget = budget
        replies = store.latest()
        replies = replies[replies["error"] == 0]
        input_tokens, output_tokens = (int(replies["input_tokens"].sum()),
                                       int(replies["output_tokens"].sum()))
        # Everything in the store, earlier runs included.
        self.spend = Spend(len(replies), input_tokens, output_tokens,
                           prices.cost(input_tokens, output_tokens))
        self.unsent: list[PlannedCall] = []  # pending calls when there is no backend
        self._consecutive_failures = 0

    def budget_reached(self) -> bool:
        b, s = self.budget, self.spend
        return ((b.output_tokens is not None and s.output_tokens >= b.output_tokens)
                or (b.dollars is not None and s.dollars >= b.dollars))

    async def run(self, calls: Callable[[], Iterable[PlannedCall]], desc: str) -> None:
        """Make the calls of `calls()` that the store lacks, within budget; their replies are
        then in the store. `calls` is asked twice: to count what is left, then to send it."""
        left = sum(not self.store.done(call.key) for call in calls())
        if not left:
            return
        pending = (call for call in calls() if not self.store.done(call.key))
        if self.backend is None:
            self.unsent.extend(pending)
            return
        bar = tqdm(total=left, desc=desc, unit="call")

        async def worker() -> None:
            for call in pending:  # one generator shared by the workers (one thread)
                if self.budget_reached():
                    return
                await self._call(call.build())
                bar.update()
                bar.set_postfix(tokens=self.spend.output_tokens, cost=f"${self.spend.dollars:.2f}",
                                failed=self.spend.failures, refresh=False)

        try:
            await asyncio.gather(*(worker() for _ in range(min(self.max_in_flight, left))))
        finally:
            bar.close()

    async def _call(self, request: ChatRequest) -> Optional[ChatResult]:
        try:
            result = await self.backend.complete(request)
        except GeneratorError:
            raise  # the backend cannot serve at all: stop with its message
        except Exception as err:  # this call failed after the backend's retries: record, go on
            self.spend.failures += 1
            self._consecutive_failures += 1
            await self.commit.put(error_entry(request.key, f"{type(err).__name__}: {err}",
                                              request.meta))
            if self._consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                raise GeneratorError(f"{MAX_CONSECUTIVE_FAILURES} generator calls failed in a "
                                     f"row (last: {type(err).__name__}: {err}); stopping. "
                                     f"Completed calls are kept: rerun to resume") from err
            return None
        self._consecutive_failures = 0
        await self.commit.put(reply_entry(request.key, result, request.meta))
        self.spend.add(result, self.prices)
        return result
