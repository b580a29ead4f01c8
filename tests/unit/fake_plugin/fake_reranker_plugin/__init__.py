"""A fake backend package registered through a real entry point (tests only)."""

from __future__ import annotations

from typing import ClassVar

from reranker.core.protocol import PairScores, RerankBackend


class LengthBackend(RerankBackend):
    """Scores a document by its length relative to the query: deterministic, no model.
    Its "model" reads an instruction (default ``fake instruction``), as the Qwen3 reranker's
    does."""

    name: ClassVar[str] = "fake_length"
    takes_instruction: ClassVar[bool] = True

    def default_instruction(self):
        return "fake instruction"

    def format_meta(self):
        return {"instruction_format": "fake"}

    def _score_pairs(self, query, docs, instruction, max_doc_tokens):
        self.calls = getattr(self, "calls", 0) + 1
        return PairScores([float(len(d)) - len(query) for d in docs], batches=1, tokens=0)


class NeedsMissingModule(LengthBackend):
    """A backend whose dependency is not installed."""

    name: ClassVar[str] = "fake_missing"
    requires: ClassVar[tuple[str, ...]] = ("surely_not_installed_module_xyz",)


class NotABackend:
    """Registered by mistake: not a RerankBackend."""


class FlakyBackend(LengthBackend):
    """Raises on the query "__boom__" and sleeps on "__slow__": to test the HTTP layer's
    handling of a failing or slow backend."""

    name: ClassVar[str] = "fake_flaky"

    def _score_pairs(self, query, docs, instruction, max_doc_tokens):
        import time

        if query == "__boom__":
            raise RuntimeError("backend exploded")
        if query == "__slow__":
            time.sleep(0.5)
        return super()._score_pairs(query, docs, instruction, max_doc_tokens)


class MortalBackend(LengthBackend):
    """Dies like a backend whose engine process is killed: scoring the query "__die__"
    raises and from then on :meth:`health` says why (as does setting ``dead``)."""

    name: ClassVar[str] = "fake_mortal"
    dead: str | None = None

    def health(self):
        return self.dead

    def _score_pairs(self, query, docs, instruction, max_doc_tokens):
        if self.dead:
            raise RuntimeError("the engine is gone")
        if query == "__die__":
            self.dead = "the fake engine process was killed"
            raise RuntimeError("the engine died during the call")
        return super()._score_pairs(query, docs, instruction, max_doc_tokens)


class PlainBackend(RerankBackend):
    """A model that takes no instruction (as a cross-encoder): scores by length."""

    name: ClassVar[str] = "fake_plain"

    def _score_pairs(self, query, docs, instruction, max_doc_tokens):
        assert instruction is None
        return PairScores([float(len(d)) for d in docs], batches=1, tokens=0)
