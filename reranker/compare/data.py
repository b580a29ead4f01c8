"""Comparison inputs: JSONL (query, documents, labels?) or BEIR/TREC files plus a run file."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from reranker.core.errors import InvalidRequest


@dataclass(frozen=True)
class QueryItem:
    """One query, its candidate documents and, when known, their graded relevance."""

    qid: str
    query: str
    docs: list[str]
    doc_ids: list[str]
    labels: list[int] | None = None


def load_jsonl(path: Path) -> list[QueryItem]:
    """``{"query", "documents": [str | {"text"}], "labels"?: [int], "query_id"?}`` per line."""
    items = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                docs = [d if isinstance(d, str) else d["text"] for d in rec["documents"]]
                labels = rec.get("labels")
                query = rec["query"]
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidRequest(f"{path}:{n}: not a valid record ({exc})") from exc
            if labels is not None and len(labels) != len(docs):
                raise InvalidRequest(f"{path}:{n}: {len(labels)} labels for {len(docs)} documents")
            qid = str(rec.get("query_id", f"q{n}"))
            items.append(
                QueryItem(
                    qid,
                    query,
                    docs,
                    [f"{qid}-d{i}" for i in range(len(docs))],
                    [int(x) for x in labels] if labels is not None else None,
                )
            )
    return items


def _read_jsonl_map(path: Path, text_of) -> dict[str, str]:  # type: ignore[no-untyped-def]
    out = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                out[str(rec["_id"])] = text_of(rec)
    return out


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """TSV ``query-id corpus-id score`` (BEIR, with header) or TREC ``qid 0 docid rel``."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t" if path.suffix == ".tsv" else " "):
            row = [c for c in row if c != ""]
            if not row or row[0] in ("query-id", "query_id"):
                continue
            if len(row) == 4:  # TREC qrels
                qid, _, did, rel = row
            else:
                qid, did, rel = row[:3]
            qrels.setdefault(qid, {})[did] = int(float(rel))
    return qrels


def read_run(path: Path, depth: int) -> dict[str, list[str]]:
    """TREC run ``qid Q0 docid rank score tag``: the top ``depth`` candidates per query."""
    scored: dict[str, list[tuple[float, str]]] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5:
                scored.setdefault(parts[0], []).append((float(parts[4]), parts[2]))
    return {q: [d for _, d in sorted(c, key=lambda x: -x[0])[:depth]] for q, c in scored.items()}


def load_beir(folder: Path, run: Path, qrels: Path | None, depth: int = 100) -> list[QueryItem]:
    """BEIR layout (queries.jsonl, corpus.jsonl, qrels) with candidates from a TREC run."""
    queries = _read_jsonl_map(folder / "queries.jsonl", lambda r: r["text"])
    corpus = _read_jsonl_map(
        folder / "corpus.jsonl",
        lambda r: (r.get("title", "") + "\n" + r["text"]).strip(),
    )
    if qrels is None:
        for candidate in (folder / "qrels" / "test.tsv", folder / "qrels.tsv"):
            if candidate.is_file():
                qrels = candidate
                break
    judged = read_qrels(qrels) if qrels else {}
    items = []
    for qid, doc_ids in read_run(run, depth).items():
        if qid not in queries:
            continue
        ids = [d for d in doc_ids if d in corpus]
        labels = [judged.get(qid, {}).get(d, 0) for d in ids] if judged else None
        items.append(QueryItem(qid, queries[qid], [corpus[d] for d in ids], ids, labels))
    return items


def load_items(
    data: str, run: str | None = None, qrels: str | None = None, depth: int = 100
) -> list[QueryItem]:
    """JSONL file, or a BEIR folder (which needs ``run``); ``qrels`` overrides the labels."""
    path = Path(data)
    if path.is_dir():
        if not run:
            raise InvalidRequest("a BEIR folder needs --run (a TREC run naming the candidates)")
        return load_beir(path, Path(run), Path(qrels) if qrels else None, depth)
    if not path.is_file():
        raise InvalidRequest(f"no such data file: {path}")
    items = load_jsonl(path)
    if qrels:
        judged = read_qrels(Path(qrels))
        items = [
            QueryItem(
                i.qid,
                i.query,
                i.docs,
                i.doc_ids,
                [judged.get(i.qid, {}).get(d, 0) for d in i.doc_ids],
            )
            for i in items
        ]
    return items
