"""``/score``, ``/v1/score``: vLLM's score API (query/document pairs, scores in input order)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import FastAPI, Request

from reranker.core.errors import InvalidRequest
from reranker.core.protocol import ScoreRequest
from reranker.service.schemas import ScoreBody, chunk_of
from reranker.service.state import Service

PATHS = ("/score", "/v1/score")


def add_routes(app: FastAPI, service: Service) -> None:
    """The score routes. The pairs of each distinct query are scored as one request; the
    requests run concurrently, and one failing cancels the others."""

    async def score(body: ScoreBody, request: Request) -> dict[str, Any]:
        try:
            queries, docs = body.pairs()
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="queries") from exc
        service.check_limits(max(queries, key=len), len(docs), body.instruction)
        groups: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault(q, []).append(i)
        runs = [
            asyncio.ensure_future(
                service.run(
                    ScoreRequest(
                        q, [docs[i] for i in idx], True, body.instruction, None, body.chunking()
                    ),
                    request,
                )
            )
            for q, idx in groups.items()
        ]
        try:
            results = await asyncio.gather(*runs)
        except BaseException:  # one query failed: the others' work is not needed either
            for pending in runs:
                pending.cancel()
            raise
        data: list[dict[str, Any]] = [{}] * len(docs)
        tokens = 0
        for idx, (scores, meta) in zip(groups.values(), results, strict=True):
            tokens += meta["scored_tokens"]
            for k, (i, s) in enumerate(zip(idx, scores, strict=True)):
                data[i] = {"index": i, "object": "score", "score": s}
                chunk = chunk_of(meta, k)
                if chunk is not None:
                    data[i]["chunk"] = chunk
        return {
            "id": request.state.request_id,
            "object": "list",
            "created": int(time.time()),
            "model": service.state.model,
            "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    for path in PATHS:
        app.post(path, summary="Score query/document pairs (vLLM shape)")(score)
