"""Checks any backend against the model-card reference on the shared pairs."""

from __future__ import annotations

from pairs import DOCS, QUERIES

from reranker.core.protocol import UNUSABLE_LOGIT

TOLERANCE = 1e-4


def usable(doc: object) -> bool:
    """Whether the protocol scores this doc (not None, not blank)."""
    return isinstance(doc, str) and bool(doc.strip())


def assert_matches_reference(backend, reference, tolerance: float = TOLERANCE) -> int:
    """Score every query x DOCS with both (each score within ``tolerance``); return the
    number of pairs compared."""
    compared = 0
    for query in QUERIES:
        wanted = [d.strip() for d in DOCS if usable(d)]
        ref_probs, ref_diffs = reference.score(query, wanted)
        for normalize, ref in ((True, ref_probs), (False, ref_diffs)):
            got, meta = backend.score_with_meta(query, DOCS, normalize=normalize)
            assert len(got) == len(DOCS)
            assert meta["usable_docs"] == len(wanted)
            assert meta["unique_docs"] < meta["usable_docs"]  # duplicates scored once
            expected = iter(ref)
            for doc, score in zip(DOCS, got, strict=True):
                if not usable(doc):
                    assert score == (0.0 if normalize else UNUSABLE_LOGIT)
                    continue
                want = next(expected)
                assert abs(score - want) <= tolerance, (query, doc[:40], score, want)
                compared += 1
    return compared
