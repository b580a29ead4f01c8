"""The HTTP routes, one module per API dialect: Cohere/Jina ``/rerank`` (cohere), vLLM
``/score`` (vllm), the protocol call ``/v1/score_with_meta`` (protocol); the ops routes
(ops) and the API pages (pages)."""
