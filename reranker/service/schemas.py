"""Request bodies of the HTTP API (pydantic), validated before anything is scored.

Documents must be text: a string (or, on the Cohere/Jina/vLLM routes, an object with a
string ``text``); ``/v1/score_with_meta`` also takes ``null`` (scored 0, the protocol's
rule for an unusable document). Numbers and booleans are refused, with a message naming
the document (``documents[2]: must be ...``), not the union branch pydantic tried. Text
that is not valid Unicode (a lone surrogate such as ``"\\ud800"``) is refused the same way,
naming the field, before it is queued (``reranker.core.protocol.invalid_unicode``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from reranker.core.chunking import ChunkingRequest
from reranker.core.protocol import invalid_unicode


class DocumentObject(BaseModel):
    """A document given as an object (Cohere / Jina style)."""

    model_config = ConfigDict(extra="allow")

    text: str


def _unicode_text(value: Any) -> Any:
    """``value`` unchanged, unless it is text that cannot be encoded as UTF-8."""
    text = value.text if isinstance(value, DocumentObject) else value
    text = text.get("text") if isinstance(text, dict) else text
    why = invalid_unicode(text) if isinstance(text, str) else None
    if why is not None:
        raise PydanticCustomError("text_unicode", "must be valid Unicode text: {why}", {"why": why})
    return value


Text = Annotated[str, AfterValidator(_unicode_text)]
"""A query or an instruction: any valid Unicode string."""


def _text_or_text_object(value: Any) -> Any:
    """A document of /rerank or /score: a string, or an object whose ``text`` is one."""
    if isinstance(value, str | DocumentObject):
        return _unicode_text(value)
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return _unicode_text(value)
    raise PydanticCustomError("document_type", "must be a string or an object with a text field")


def _text_or_null(value: Any) -> Any:
    """A document of /v1/score_with_meta: a string, or null (scored 0 as unusable)."""
    if value is None or isinstance(value, str):
        return _unicode_text(value)
    raise PydanticCustomError("document_type", "must be a string or null")


Document = Annotated[str | DocumentObject, BeforeValidator(_text_or_text_object)]
"""A document of /rerank or /score, checked before pydantic tries the union's branches."""

NullableDocument = Annotated[str | None, BeforeValidator(_text_or_null)]
"""A document of /v1/score_with_meta."""


class ChunkingFields(BaseModel):
    """How this request scores documents longer than a chunk (``reranker.core.chunking``);
    an unset field keeps the service's ``long_documents`` options."""

    long_documents: Literal["truncate", "chunk"] | None = None
    chunk_tokens: int | None = Field(None, ge=1)
    chunk_overlap: int | None = Field(None, ge=0)
    chunk_aggregate: Literal["max", "mean", "first"] | None = None
    max_chunks_per_doc: int | None = Field(None, ge=1, le=10000)
    return_chunks: bool = False

    def chunking(self) -> ChunkingRequest | None:
        """The request's chunking choices, or None where it sets none."""
        choices = ChunkingRequest(
            self.long_documents,
            self.chunk_tokens,
            self.chunk_overlap,
            self.chunk_aggregate,
            self.max_chunks_per_doc,
            self.return_chunks,
        )
        return None if choices == ChunkingRequest() else choices


def chunk_of(meta: Any, i: int) -> dict[str, int] | None:
    """The chunk that decided document ``i``'s score, where the request asked for it."""
    best = meta.best_chunks
    return best[i] if best is not None else None


class RerankBody(ChunkingFields):
    """``POST /rerank``, ``/v1/rerank``, ``/v2/rerank`` (Cohere v2 / Jina shape)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    query: Text
    documents: list[Document]
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = False
    max_tokens_per_doc: int | None = Field(None, ge=1)
    instruction: Text | None = None
    rank_fields: list[str] | None = None  # accepted for compatibility, unused

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query must not be empty or whitespace")
        return value

    @field_validator("documents")
    @classmethod
    def _documents_not_empty(cls, value: list[Any]) -> list[Any]:
        if not value:
            raise ValueError("documents must hold at least one document")
        return value

    def texts(self) -> list[str]:
        """Document texts, in input order."""
        return [d if isinstance(d, str) else d.text for d in self.documents]


class ScoreBody(ChunkingFields):
    """``POST /score`` (vLLM shape): ``queries``/``documents`` or ``text_1``/``text_2``."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    queries: Text | list[Text] | None = None
    documents: Text | list[Document] | None = None
    text_1: Text | list[Text] | None = None
    text_2: Text | list[Document] | None = None
    instruction: Text | None = None

    def pairs(self) -> tuple[list[str], list[str]]:
        """(queries, documents) of equal length, or a ValueError saying what is wrong."""
        left = self.queries if self.queries is not None else self.text_1
        right = self.documents if self.documents is not None else self.text_2
        if left is None or right is None:
            raise ValueError("give queries and documents (or text_1 and text_2)")
        queries = [left] if isinstance(left, str) else list(left)
        docs_raw = [right] if isinstance(right, str | DocumentObject) else list(right)
        docs = [d if isinstance(d, str) else d.text for d in docs_raw]
        if not queries or not docs:
            raise ValueError("queries and documents must not be empty")
        if len(queries) == 1:
            queries = queries * len(docs)
        if len(queries) != len(docs):
            raise ValueError(
                f"{len(queries)} queries for {len(docs)} documents: give one query, or as "
                "many queries as documents"
            )
        if any(not q.strip() for q in queries):
            raise ValueError("queries must not be empty or whitespace")
        return queries, docs


class ScoreWithMetaBody(ChunkingFields):
    """``POST /v1/score_with_meta``: exactly the protocol call."""

    model_config = ConfigDict(extra="forbid")

    query: Text | None
    docs: list[NullableDocument]
    normalize: bool = True
    instruction: Text | None = None
    max_doc_tokens: int | None = Field(None, ge=1)
