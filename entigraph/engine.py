"""Runs generator calls: bounded concurrency, the call store, token and dollar budgets, progress.

Requests are issued in the order given by `max_in_flight` workers; a call already in the store
is never made again. When a budget is reached no new call starts; calls in flight finish and are
kept (they are paid for). A backend that keeps failing stops the run instead of burning through
every request.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Iterable, Optional

from tqdm.auto import tqdm

from entigraph.call_store import CallStore
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


class Engine:
    def __init__(self, backend: Optional[Backend], store: CallStore, max_in_flight: int,
                 prices: Prices = Prices(), budget: Budget = Budget()):
        self.backend = backend  # None: collect requests for a batch file instead of calling
        self.store = store
        self.max_in_flight = max_in_flight
        self.prices = prices
        self.budget = budget
        self.spend = Spend()  # everything in the store, earlier runs included
        for key in store.entries:
            if result := store.result(key):
                self.spend.add(result, prices)
        self.unsent: list[ChatRequest] = []  # pending requests when there is no backend
        self._consecutive_failures = 0

    def budget_reached(self) -> bool:
        b, s = self.budget, self.spend
        return ((b.output_tokens is not None and s.output_tokens >= b.output_tokens)
                or (b.dollars is not None and s.dollars >= b.dollars))

    async def run(self, requests: Iterable[ChatRequest], desc: str) -> dict[str, ChatResult]:
        """Results for `requests`: from the store, or by calling the backend, within budget."""
        results, pending = {}, []
        for request in requests:
            if done := self.store.result(request.key):
                results[request.key] = done
            else:
                pending.append(request)
        if not pending:
            return results
        if self.backend is None:
            self.unsent.extend(pending)
            return results
        bar = tqdm(total=len(pending), desc=desc, unit="call")
        queue = iter(pending)  # shared by the workers; asyncio runs them on one thread

        async def worker() -> None:
            for request in queue:
                if self.budget_reached():
                    return
                result = await self._call(request)
                if result is not None:
                    results[request.key] = result
                bar.update()
                bar.set_postfix(tokens=self.spend.output_tokens, cost=f"${self.spend.dollars:.2f}",
                                failed=self.spend.failures, refresh=False)

        try:
            await asyncio.gather(*(worker() for _ in range(min(self.max_in_flight, len(pending)))))
        finally:
            bar.close()
        return results

    async def _call(self, request: ChatRequest) -> Optional[ChatResult]:
        try:
            result = await self.backend.complete(request)
        except GeneratorError:
            raise  # the backend cannot serve at all: stop with its message
        except Exception as err:  # this call failed after the backend's retries: record, go on
            self.spend.failures += 1
            self._consecutive_failures += 1
            self.store.put_error(request.key, f"{type(err).__name__}: {err}", request.meta)
            if self._consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                raise GeneratorError(f"{MAX_CONSECUTIVE_FAILURES} generator calls failed in a "
                                     f"row (last: {type(err).__name__}: {err}); stopping. "
                                     f"Completed calls are kept: rerun to resume") from err
            return None
        self._consecutive_failures = 0
        self.store.put(request.key, result, request.meta)
        self.spend.add(result, self.prices)
        return result
