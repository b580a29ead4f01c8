"""Scale-out: the service as a Ray Serve application (``services.rerank.scale``).

One HTTP front (the same app as the single-process service, see
:mod:`reranker.service.app`) and N backend replicas, each a backend behind its own
scheduler, spread by Ray's router over every GPU of a host or of a Ray cluster
(docs/scaling.md). Ray is imported only here, and only when a ``scale`` section is set.
"""
