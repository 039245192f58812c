"""What every generator backend speaks: one chat request in, one completion out.

Backends (offline, OpenAI-compatible, vLLM in-process) implement `Backend`; the synthesis
engine schedules requests, stores results and enforces budgets, so backends stay small.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from entigraph.errors import EntigraphError


@dataclass(frozen=True)
class ChatRequest:
    key: str  # the call store's key: prompt set, model, document, kind, entities, sample
    messages: tuple[dict, ...]  # [{"role": "system"|"user", "content": str}, ...]
    temperature: float = 1.0
    max_tokens: Optional[int] = None
    # For extraction: ask the server for JSON matching this schema (structured output or JSON
    # mode, whichever the backend supports); None for free text.
    json_schema: Optional[dict] = None
    seed: Optional[int] = None
    # What the request is about (document uid, kind, entities, sample): for the store, the
    # manifest and the offline generator; never sent to a server.
    meta: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ChatResult:
    text: str
    input_tokens: int
    output_tokens: int


class GeneratorError(EntigraphError):
    """A backend that cannot serve at all (no API key, unreachable server, unknown model)."""


class Backend(Protocol):
    async def complete(self, request: ChatRequest) -> ChatResult:
        """One completion; raises after its own retries are exhausted."""

    async def aclose(self) -> None:
        """Release connections or engines."""


# OpenAI models that take `response_format: json_schema` (structured outputs): gpt-4o from its
# 2024-08-06 snapshot (and the alias, which points there or later), gpt-4o-mini, gpt-4.1, gpt-4.5,
# gpt-5 and the o1/o3/o4 reasoning models. Others, gpt-4-turbo (the paper's generator) among them,
# answer it with HTTP 400 and take JSON mode.
_SCHEMA_MODELS = re.compile(r"^(gpt-4o(-mini.*|-2024-(08-06|11-20)|-20(2[5-9]).*)?|chatgpt-4o.*|"
                            r"gpt-4\.[15].*|gpt-5.*|o1(-20.*)?|o3.*|o4.*)$")


def resolve_structured_output(mode: str, backend: str, model: Optional[str]) -> str:
    """generator.structured_output as json_schema or json_object. auto: the schema where it is
    known to work (vLLM's own engine guides any model; the OpenAI models above), JSON mode
    elsewhere, which every OpenAI-compatible server takes."""
    if mode != "auto":
        return mode
    if backend == "vllm":
        return "json_schema"
    name = (model or "").rsplit("/", 1)[-1]
    return "json_schema" if _SCHEMA_MODELS.match(name) else "json_object"


def rejects_response_format(error: str) -> bool:
    """Whether a failed call's error ("HTTP <status>: <server message>", as the openai backend
    and batch results describe them) is the server refusing our `response_format`."""
    return error.startswith("HTTP 400") and "response_format" in error


def schema_payload(schema: dict[str, Any]) -> dict:
    """The OpenAI `response_format` asking for JSON that matches `schema`."""
    return {"type": "json_schema",
            "json_schema": {"name": "extraction", "schema": schema, "strict": True}}


def chat_body(request: ChatRequest, model: str, structured_output: str) -> dict[str, Any]:
    """The chat-completions body of `request`, as sent to a server or written to a batch file."""
    body: dict[str, Any] = {"model": model, "messages": list(request.messages),
                            "temperature": request.temperature}
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.seed is not None:
        body["seed"] = request.seed
    if request.json_schema is not None:
        body["response_format"] = (schema_payload(request.json_schema)
                                   if structured_output == "json_schema"
                                   else {"type": "json_object"})
    return body
