"""The Qwen3-Reranker pair format: its options (instruction, prompt layout) and the
backend mixin that gives a backend the format's template, default instruction and meta.

The prompt itself (layouts, yes/no token ids, truncation) is
:mod:`reranker.formats.qwen3_prompt`.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

from pydantic import Field, model_validator

from reranker.core.options import BackendOptions, TransformersOptions, VLLMOptions
from reranker.formats.qwen3_prompt import DEFAULT_INSTRUCTION, Qwen3PromptTemplate


class Qwen3PromptOptions(BackendOptions):
    """The Qwen3-Reranker prompt's options: its default instruction and layout."""

    instruction: str = Field(DEFAULT_INSTRUCTION, min_length=1)
    instruction_format: Literal["standard", "compact"] = "standard"
    prompt_prefix: str | None = None
    prompt_suffix: str | None = None
    query_template: str | None = None
    document_template: str | None = None

    @model_validator(mode="after")
    def _templates_are_valid(self) -> Qwen3PromptOptions:
        self.prompt_template()
        return self

    def prompt_template(self) -> Qwen3PromptTemplate:
        """The validated prompt layout these options describe."""
        return Qwen3PromptTemplate.build(
            instruction_format=self.instruction_format,
            prefix=self.prompt_prefix,
            suffix=self.prompt_suffix,
            query_template=self.query_template,
            document_template=self.document_template,
        )


class Qwen3TransformersOptions(TransformersOptions, Qwen3PromptOptions):
    """Options of ``qwen3_transformers``: the transformers engine's and the prompt's."""


class Qwen3VLLMOptions(VLLMOptions, Qwen3PromptOptions):
    """Options of the Qwen3 vLLM backends: the vLLM engine's and the prompt's."""


class Qwen3PromptFormat:
    """Mixin of the backends that score with the Qwen3-Reranker prompt: they take a
    per-request instruction (default: the ``instruction`` option) and report their
    ``instruction_format`` in meta."""

    takes_instruction: bool = True
    options: Qwen3PromptOptions

    @cached_property
    def template(self) -> Qwen3PromptTemplate:
        """The prompt layout of this backend's options."""
        return self.options.prompt_template()

    def default_instruction(self) -> str | None:
        """The instruction of a request that names none."""
        return self.options.instruction

    def format_meta(self) -> dict[str, Any]:
        """The format's meta keys."""
        return {"instruction_format": self.options.instruction_format}
