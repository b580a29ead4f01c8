"""Scale-out: the service as a Ray Serve application (``services.rerank.scale``).

The HTTP app of the single-process service (:mod:`reranker.service.app`), served by the
``reranker serve`` process or, with ``ingress: ray``, by HTTP-front replicas behind Ray
Serve's proxies, over N backend replicas, each a backend behind its own scheduler,
spread by Ray's router over every GPU of a host or of a Ray cluster (docs/scaling.md).
Ray is imported only here, and only when a ``scale`` section is set.
"""
