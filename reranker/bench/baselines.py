"""What users would write without this package, measured on the same model and inputs.

Used by ``reranker bench --baseline`` to put each backend next to its raw counterpart:
- ``raw_vllm_generate``: text prompts, one ``LLM.generate`` call, top-20 logprobs;
- ``raw_vllm_score``: ``LLM.score`` once per query;
- ``model_card_transformers``: the model card's recipe (unsorted batches of 8, padded,
  full-vocabulary logits at the last position);
- ``raw_vllm_cross_encoder_score``: ``LLM.score(query, docs)`` once per query on the
  cross-encoder's engine (vLLM tokenises each text pair);
- ``sentence_transformers_predict``: ``sentence_transformers.CrossEncoder.predict`` on
  the (query, document) texts, its defaults (batches of 32).

A Qwen3-Reranker sequence classifier on a cross-encoder backend gets the Qwen3 prompt's
two halves as its text pair (query part with the instruction; document with the tail).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from reranker.bench.workload import Workload
from reranker.formats.qwen3_prompt import NO_TOKEN_ID, YES_TOKEN_ID


def _prompts(backend: Any, workload: Workload) -> list[str]:
    instruction = backend.options.instruction
    return [
        backend.template.prompt_text(q, d, instruction)
        for q, docs in zip(workload.queries, workload.docs, strict=True)
        for d in docs
    ]


def raw_vllm_generate(backend: Any, workload: Workload) -> int:
    """All prompts as text in one ``LLM.generate`` call; returns pairs scored."""
    from vllm import SamplingParams

    prompts = _prompts(backend, workload)
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=20)
    backend._llm.generate(prompts, params, use_tqdm=False)
    return len(prompts)


def raw_vllm_score(backend: Any, workload: Workload) -> int:
    """``LLM.score(query_text, doc_texts)`` once per query; returns pairs scored."""
    lead, tail = backend.template.document_lead_and_tail()
    n = 0
    for q, docs in zip(workload.queries, workload.docs, strict=True):
        query_text = backend.template.query_text(q, backend.options.instruction)
        backend._llm.score(query_text, [lead + d + tail for d in docs], use_tqdm=False)
        n += len(docs)
    return n


_PLAIN_MODELS: dict[tuple[str, str, str], Any] = {}


def _plain_model(backend: Any) -> Any:
    """The model as the model card loads it (default attention, nothing fused or compiled),
    in the backend's dtype and on its device; loaded once per process."""
    from transformers import AutoModelForCausalLM

    key = (backend.options.model_name, str(backend.dtype), str(backend.device))
    if key not in _PLAIN_MODELS:
        model = AutoModelForCausalLM.from_pretrained(key[0], dtype=backend.dtype)
        _PLAIN_MODELS[key] = model.to(backend.device).eval()
    return _PLAIN_MODELS[key]


def model_card_transformers(backend: Any, workload: Workload, batch_size: int = 8) -> int:
    """The model card's recipe with the backend's tokenizer and a plainly loaded model."""
    import torch

    tokenizer, model = backend._tokenizer, _plain_model(backend)
    prompts = _prompts(backend, workload)
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            inputs = tokenizer(
                prompts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=backend.options.max_model_len,
                return_tensors="pt",
                add_special_tokens=False,
            ).to(model.device)
            logits = model(**inputs).logits[:, -1, :]
            pair = torch.stack([logits[:, NO_TOKEN_ID], logits[:, YES_TOKEN_ID]], dim=1)
            torch.nn.functional.log_softmax(pair.float(), dim=1)[:, 1].exp().tolist()
    return len(prompts)


def _text_pairs(backend: Any, workload: Workload) -> list[tuple[str, str]]:
    """The (query, document) texts a user hands a cross-encoder library: the texts
    themselves, or, for a model that reads the Qwen3 prompt, the prompt's two halves."""
    if not backend.takes_instruction:
        return [
            (q, d) for q, docs in zip(workload.queries, workload.docs, strict=True) for d in docs
        ]
    lead, tail = backend.template.document_lead_and_tail()
    instruction = backend.options.instruction
    return [
        (backend.template.query_text(q, instruction), lead + d + tail)
        for q, docs in zip(workload.queries, workload.docs, strict=True)
        for d in docs
    ]


def raw_vllm_cross_encoder_score(backend: Any, workload: Workload) -> int:
    """``LLM.score(query, doc_texts)`` once per query on the backend's engine, pairs cut to
    its pair limit; returns pairs scored."""
    limit = {"truncation": True, "max_length": backend._max_len}
    pairs = _text_pairs(backend, workload)
    start = 0
    for docs in workload.docs:
        share = pairs[start : start + len(docs)]
        start += len(docs)
        backend._llm.score(
            share[0][0], [d for _, d in share], use_tqdm=False, tokenization_kwargs=limit
        )
    return len(pairs)


_CROSS_ENCODERS: dict[tuple[str, str, str, int], Any] = {}


def sentence_transformers_predict(backend: Any, workload: Workload) -> int:
    """``CrossEncoder(model).predict(pairs)`` with sentence-transformers' defaults, in the
    backend's dtype, on its device, with its pair limit (loaded once per process)."""
    from sentence_transformers import CrossEncoder

    key = (backend.options.model_name, str(backend.dtype), str(backend.device), backend.max_len)
    if key not in _CROSS_ENCODERS:
        _CROSS_ENCODERS[key] = CrossEncoder(
            key[0], max_length=key[3], device=key[2], model_kwargs={"dtype": backend.dtype}
        )
    pairs = _text_pairs(backend, workload)
    _CROSS_ENCODERS[key].predict(pairs, show_progress_bar=False)
    return len(pairs)


# Modules a baseline needs beyond its backend's own.
BASELINE_MODULES = {"cross_encoder_transformers": ("sentence_transformers",)}


def missing_modules(backend_name: str) -> list[str]:
    """The modules the baseline of ``backend_name`` needs that are not installed."""
    needed = BASELINE_MODULES.get(backend_name, ())
    return [m for m in needed if importlib.util.find_spec(m) is None]


BASELINES = {
    "qwen3_vllm": ("raw vLLM LLM.generate (1 call, top-20 logprobs)", raw_vllm_generate),
    "qwen3_vllm_score": ("raw vLLM LLM.score (1 call per query)", raw_vllm_score),
    "qwen3_transformers": ("model card transformers recipe (batch 8)", model_card_transformers),
    "cross_encoder_vllm": (
        "raw vLLM LLM.score (text pairs, 1 call per query)",
        raw_vllm_cross_encoder_score,
    ),
    "cross_encoder_transformers": (
        "sentence-transformers CrossEncoder.predict (batch 32)",
        sentence_transformers_predict,
    ),
}
