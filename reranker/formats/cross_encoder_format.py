"""The cross-encoder backends' side of the pair formats: their format options (the
family, and the Qwen3-Reranker prompt's options for the families that read it) and the
mixin that gives a backend its family, pair encoder, instruction handling and meta.

The family is known only once the checkpoint's ``config.json`` is read, so
``takes_instruction`` is set per backend instance: True for a Qwen3-Reranker sequence
classifier (its default instruction is the ``instruction`` option), False for the
text-pair families (a request with an instruction is then refused).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from pydantic import Field

from reranker.core.errors import ConfigError
from reranker.core.options import BackendOptions
from reranker.formats.cross_encoder import (
    CrossEncoderModel,
    FamilyName,
    PairEncoder,
    Qwen3PairEncoder,
    TextPairEncoder,
    detect,
)
from reranker.formats.qwen3 import Qwen3PromptOptions
from reranker.formats.qwen3_prompt import Qwen3PromptEncoder, Qwen3PromptTemplate, TextTokenizer

# The Qwen3-Reranker prompt's options: only a model that reads that prompt uses them.
QWEN3_PROMPT_FIELDS = frozenset(Qwen3PromptOptions.model_fields) - set(BackendOptions.model_fields)
# A Qwen3 prompt's length when max_model_len is left unset: the Qwen3 backends' default.
QWEN3_DEFAULT_MAX_LEN = 4096


class CrossEncoderFormatOptions(Qwen3PromptOptions):
    """The cross-encoder pair format's options: the family (auto: from the checkpoint)
    and, for a Qwen3-Reranker sequence classifier, the Qwen3 prompt's options."""

    family: FamilyName = Field(
        "auto",
        description="auto: from config.json's architectures; a family name chooses the "
        "pair format of a sequence classifier whose architecture names none",
    )


class CrossEncoderFormat:
    """Mixin of the cross-encoder backends. Call :meth:`_read_family` first in
    ``__init__`` (before anything is loaded), then :meth:`_pair_encoder`."""

    options: CrossEncoderFormatOptions
    takes_instruction: bool = False
    model_info: CrossEncoderModel

    def _read_family(self) -> CrossEncoderModel:
        """Detect the family (a :class:`ConfigError` for a checkpoint that is no
        cross-encoder, or prompt options given for a model that reads no prompt)."""
        opts = self.options
        self.model_info = detect(opts.model_name, opts.family)
        self.takes_instruction = self.model_info.reads_qwen3_prompt
        if self.takes_instruction:
            if "max_model_len" not in opts.model_fields_set:
                opts.max_model_len = QWEN3_DEFAULT_MAX_LEN
        else:
            given = sorted(QWEN3_PROMPT_FIELDS & opts.model_fields_set)
            if given:
                raise ConfigError(
                    f"{', '.join(given)}: options of the Qwen3-Reranker prompt; the "
                    f"{self.model_info.family} model {opts.model_name} reads a text pair, "
                    "no prompt and no instruction"
                )
        return self.model_info

    @cached_property
    def template(self) -> Qwen3PromptTemplate:
        """The Qwen3 prompt layout of these options."""
        return self.options.prompt_template()

    def _pair_encoder(
        self, tokenizer: Any, text_tokenizer: TextTokenizer, max_len: int
    ) -> PairEncoder:
        """The family's pair encoder: ``tokenizer`` joins text pairs; ``text_tokenizer``
        (the same tokenizer) encodes the Qwen3 prompt's parts."""
        if not self.model_info.reads_qwen3_prompt:
            return TextPairEncoder(tokenizer, max_len)
        return Qwen3PairEncoder(Qwen3PromptEncoder(self.template, text_tokenizer, max_len))

    def default_instruction(self) -> str | None:
        """The instruction of a request that names none (None: the model takes none)."""
        return self.options.instruction if self.takes_instruction else None

    def format_meta(self) -> dict[str, Any]:
        """The Qwen3 prompt's ``instruction_format``, for a model that reads it."""
        return (
            {"instruction_format": self.options.instruction_format}
            if self.takes_instruction
            else {}
        )
