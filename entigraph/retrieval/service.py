"""Calls to an OpenAI-compatible embeddings or rerank server, with generation's retry rules
(entigraph.openai_backend.OpenAIService), and their failures as one line naming the config key.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Iterable, Sequence, TypeVar

from entigraph.errors import EntigraphError

T = TypeVar("T")
# Fewer texts than this get no progress bar.
PROGRESS_MIN = 500


def _call_service(service_cfg: Any, config_key: str,
                 work: Callable[[Any], Awaitable[T]], *, models_listed: bool = True) -> T:
    """Run `work(service)` on a fresh OpenAIService for `service_cfg` (an eval.rag.retriever or
    eval.rag.reranker node, named `config_key`), after a preflight that fails fast on an
    unreachable server or a rejected key. A request that fails for good ends the call with an
    EntigraphError: what was being made (an index, a cache entry) is then not kept."""
    from entigraph.openai_backend import OpenAIService, RequestFailed

    async def session() -> T:
        service = OpenAIService(service_cfg, config_key=config_key)
        try:
            await service.preflight(models_listed)
            return await work(service)
        finally:
            await service.aclose()

    try:
        return asyncio.run(session())
    except RequestFailed as err:
        raise EntigraphError(f"{config_key}: {err}; check the server at {config_key}.base_url "
                             f"or raise {config_key}.max_retries, then run again (nothing "
                             f"half-made was cached)") from None


async def _gather_or_cancel(calls: Iterable[Awaitable[T]]) -> list[T]:
    """asyncio.gather, but the first failure cancels the other calls (and waits for them), so
    none is left running against a client about to close."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def post_each(service_cfg: Any, config_key: str, path: str, bodies: Sequence[dict],
              parse: Callable[[dict, dict], tuple[T, int]], *, desc: str,
              units: Callable[[dict], int], models_listed: bool = True) -> list[T]:
    """POST every body to `path` (max_in_flight at once, each retried as generation's are);
    parse(body, reply) gives a body's result and the tokens it cost. The progress bar counts
    units(body) per body (texts, queries)."""
    bar = _progress(sum(map(units, bodies)), desc)

    async def one(service, n: int, body: dict) -> T:
        result = await service.post(path, lambda: body, f"{path.strip('/')} #{n}",
                                    lambda reply: parse(body, reply))
        bar.update(units(body))
        return result

    async def work(service) -> list[T]:
        # max_in_flight workers, not a task a body: thousands of tasks waiting for a slot would
        # all wake at each freed one (client CPU growing with the square of the requests).
        results: list[T] = [None] * len(bodies)  # type: ignore[list-item]
        pending = enumerate(bodies)  # one iterator shared by the workers (one thread)

        async def worker() -> None:
            for n, body in pending:
                results[n] = await one(service, n, body)

        workers = min(int(service_cfg.max_in_flight), len(bodies))
        await _gather_or_cancel(worker() for _ in range(workers))
        return results

    with bar:
        return _call_service(service_cfg, config_key, work, models_listed=models_listed)


def _progress(total: int, desc: str):
    """A tqdm bar for `total` texts or queries, shown only when there are many."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=total < PROGRESS_MIN)
