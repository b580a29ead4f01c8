"""``/rerank``, ``/v1/rerank``, ``/v2/rerank``: the Cohere v2 / Jina rerank API."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

from reranker.core.meta import ScoreMeta
from reranker.core.protocol import ScoreRequest, rank_order
from reranker.service.schemas import RerankBody, chunk_of
from reranker.service.state import Service

PATHS = ("/rerank", "/v1/rerank", "/v2/rerank")


def usage(meta: ScoreMeta) -> dict[str, Any]:
    """The ``usage`` object of a response: the tokens scored."""
    return {"prompt_tokens": meta["scored_tokens"], "total_tokens": meta["scored_tokens"]}


def add_routes(app: FastAPI, service: Service) -> None:
    """The rerank routes: documents ranked by relevance, best first (``top_n`` of them),
    with Cohere's ``meta`` and ``usage``."""

    async def rerank(body: RerankBody, request: Request) -> dict[str, Any]:
        texts = body.texts()
        service.check_limits(body.query, len(texts), body.instruction)
        scores, meta = await service.run(
            ScoreRequest(
                body.query,
                texts,
                True,
                body.instruction,
                body.max_tokens_per_doc,
                body.chunking(),
            ),
            request,
        )
        order = rank_order(scores, texts)
        if body.top_n is not None:
            order = order[: body.top_n]
        results = []
        for i in order:
            item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
            if body.return_documents:
                item["document"] = {"text": texts[i]}
            chunk = chunk_of(meta, i)
            if chunk is not None:
                item["chunk"] = chunk
            results.append(item)
        return {
            "id": request.state.request_id,
            "model": service.state.model,
            "results": results,
            "usage": {**usage(meta), "search_units": 1},
            "meta": {
                **{k: v for k, v in meta.to_dict().items() if k != "best_chunks"},
                "api_version": {"version": "2"},
                "billed_units": {"search_units": 1, "input_tokens": meta["scored_tokens"]},
            },
        }

    for path in PATHS:
        app.post(path, summary="Rerank documents (Cohere v2 / Jina shape)")(rerank)
