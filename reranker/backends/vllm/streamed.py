"""One engine call whose prompts go to the engine while the rest are still tokenised.

``LLM.generate(prompts)`` needs every prompt before it starts; tokenising a call's
documents first (a 1,000-document call: ~0.3 s of the host's time) would leave the GPU
idle meanwhile. vLLM's engine core runs in a process of its own: a request added to it
(``LLMEngine.add_request``) starts while this process tokenises the next documents, as
vLLM's own ``LLM.generate`` does with text prompts. :func:`run_streamed` adds each chunk's
requests as soon as it is tokenised, then collects the outputs (``LLMEngine.step``, the
loop ``LLM.generate`` runs).

:class:`reranker.backends.transformers.jobs.DocChunks` cuts a call's jobs into jobs of at
most a few documents, and puts their results back together.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable
from typing import Any

ENGINE_METHODS = ("add_request", "step", "has_unfinished_requests")
_request_ids = itertools.count()


def can_stream(llm: Any) -> bool:
    """Whether ``llm`` (a ``vllm.LLM``) has the engine methods :func:`run_streamed` uses."""
    engine = getattr(llm, "llm_engine", None)
    return all(callable(getattr(engine, name, None)) for name in ENGINE_METHODS)


def run_streamed(
    llm: Any,
    chunks: Iterable[list[Any]],
    params: Any,
    read: Callable[[Any], float],
) -> list[list[float]]:
    """Add each chunk's prompts (``TokensPrompt`` s) to ``llm`` 's engine as the chunk
    comes (``chunks`` may tokenise lazily), then run the engine until every one is
    answered; ``read(output)`` of each, per chunk, in order. ``params``: the
    ``SamplingParams`` of every request (``output_kind`` FINAL_ONLY). On an error the
    requests still queued are aborted."""
    engine = llm.llm_engine
    where: dict[str, tuple[int, int]] = {}  # request id -> (chunk, prompt)
    values: list[list[float]] = []
    try:
        for c, prompts in enumerate(chunks):
            values.append([0.0] * len(prompts))
            for k, prompt in enumerate(prompts):
                request_id = f"reranker-{next(_request_ids)}"
                engine.add_request(request_id, prompt, params)
                where[request_id] = (c, k)
        while where and engine.has_unfinished_requests():
            for output in engine.step():
                if output.finished and output.request_id in where:
                    c, k = where.pop(output.request_id)
                    values[c][k] = read(output)
    except BaseException:
        _abort(engine, list(where))
        raise
    if where:
        raise RuntimeError(f"the vLLM engine finished without answering {len(where)} prompts")
    return values


def _abort(engine: Any, request_ids: list[str]) -> None:
    """Abort ``request_ids`` (best effort: the engine may be dead)."""
    abort = getattr(engine, "abort_request", None)
    if request_ids and callable(abort):
        with contextlib.suppress(Exception):  # a dead engine: nothing is left to abort
            abort(request_ids)
