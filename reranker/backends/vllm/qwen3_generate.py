"""``qwen3_vllm``: Qwen3-Reranker through vLLM ``LLM.generate`` (one token, greedy).

The score comes from the real log-probabilities of both "yes" and "no" at the first
generated position: P(yes) = exp(lp_yes) / (exp(lp_yes) + exp(lp_no)), i.e.
sigmoid(lp_yes - lp_no). vLLM's default top-k logprobs can leave "no" out, so the two ids
are requested explicitly (``SamplingParams.logprob_token_ids`` where vLLM has it; else
``allowed_token_ids=[yes, no]`` with processed logprobs). A missing value is an error,
never a substituted constant.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from reranker.backends.hf_loading import load_or_explain
from reranker.backends.vllm.engine import engine_kwargs, has_field
from reranker.backends.vllm.qwen3 import Qwen3VLLMBackendBase
from reranker.formats.qwen3_prompt import NO_TOKEN_ID, YES_TOKEN_ID

logger = logging.getLogger(__name__)


class Qwen3VLLMBackend(Qwen3VLLMBackendBase):
    """Qwen3-Reranker on vLLM's generate path; one engine call per request."""

    name: ClassVar[str] = "qwen3_vllm"

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        from vllm import SamplingParams

        opts = self.options
        self._explicit_ids = has_field(SamplingParams, "logprob_token_ids")
        extra: dict[str, Any] = {}
        if self._explicit_ids:
            self._params = SamplingParams(
                max_tokens=1, temperature=0.0, logprob_token_ids=[YES_TOKEN_ID, NO_TOKEN_ID]
            )
        else:
            # Logprobs after the allowed-token mask: exactly yes and no remain.
            extra["logprobs_mode"] = "processed_logprobs"
            self._params = SamplingParams(
                max_tokens=1,
                temperature=0.0,
                logprobs=2,
                allowed_token_ids=[YES_TOKEN_ID, NO_TOKEN_ID],
            )
        # One generated token needs one more position than the longest prompt.
        extra["max_model_len"] = opts.max_model_len + 1
        if self._checkpoint_positions() == opts.max_model_len:
            # That token is sampled from the prompt's last logits and never run through
            # the model (max_tokens=1), so its position is never computed: the checkpoint
            # may claim one more, and prompts keep the same limit as on every backend.
            extra["hf_overrides"] = {"max_position_embeddings": opts.max_model_len + 1}
        self._start_engines(engine_kwargs(opts, "generate", **extra))

    def _checkpoint_positions(self) -> int | None:
        """The checkpoint's ``max_position_embeddings`` (None where it has none)."""
        from transformers import AutoConfig

        name = self.options.model_name
        config = load_or_explain(
            name,
            "config",
            lambda: AutoConfig.from_pretrained(name, local_files_only=self._cache_only),
        )
        positions = getattr(config, "max_position_embeddings", None)
        return positions if isinstance(positions, int) else None

    def meta_extra(self) -> dict[str, Any]:
        """Device, dtype, and how the yes/no logprobs are obtained."""
        return {
            **super().meta_extra(),
            "logprob_method": "logprob_token_ids" if self._explicit_ids else "allowed_token_ids",
        }

    def _logits_on(self, llm: Any, prompts: list[Any]) -> list[float]:
        """lp(yes) - lp(no) at the first generated position of each prompt."""
        outputs = llm.generate(prompts, self._params, use_tqdm=False)
        return [yes_minus_no(out.outputs[0].logprobs[0]) for out in outputs]


def yes_minus_no(position_logprobs: dict[int, Any]) -> float:
    """lp(yes) - lp(no) at one position; both must be present."""
    try:
        return float(position_logprobs[YES_TOKEN_ID].logprob) - float(
            position_logprobs[NO_TOKEN_ID].logprob
        )
    except KeyError as exc:
        raise RuntimeError(
            f"vLLM returned no logprob for token {exc.args[0]} (yes={YES_TOKEN_ID}, "
            f"no={NO_TOKEN_ID}); refusing to guess a score"
        ) from exc
