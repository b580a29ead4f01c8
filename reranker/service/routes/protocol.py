"""``/v1/score_with_meta``: the backend protocol's call over HTTP (scores in input order
and the call's meta)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

from reranker.core.protocol import ScoreRequest
from reranker.service.schemas import ScoreWithMetaBody
from reranker.service.state import Service


def add_routes(app: FastAPI, service: Service) -> None:
    """The ``score_with_meta`` route: ``{"scores", "meta"}``."""

    @app.post("/v1/score_with_meta", summary="The protocol call: scores in input order + meta")
    async def score_with_meta(body: ScoreWithMetaBody, request: Request) -> dict[str, Any]:
        service.check_limits(body.query, len(body.docs), body.instruction)
        scores, meta = await service.run(
            ScoreRequest(
                body.query,
                body.docs,
                body.normalize,
                body.instruction,
                body.max_doc_tokens,
                body.chunking(),
            ),
            request,
        )
        return {"scores": scores, "meta": meta.to_dict()}
