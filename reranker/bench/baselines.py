"""What users would write without this package, measured on the same model and inputs.

Used by ``reranker bench --baseline`` to put each backend next to its raw counterpart:
- ``raw_vllm_generate``: text prompts, one ``LLM.generate`` call, top-20 logprobs;
- ``raw_vllm_score``: ``LLM.score`` once per query;
- ``model_card_transformers``: the model card's recipe (unsorted batches of 8, padded,
  full-vocabulary logits at the last position).
"""

from __future__ import annotations

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


BASELINES = {
    "qwen3_vllm": ("raw vLLM LLM.generate (1 call, top-20 logprobs)", raw_vllm_generate),
    "qwen3_vllm_score": ("raw vLLM LLM.score (1 call per query)", raw_vllm_score),
    "qwen3_transformers": ("model card transformers recipe (batch 8)", model_card_transformers),
}
