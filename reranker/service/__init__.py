"""The HTTP service: the app factory (app), the scoring path the routes share (state),
routes per API dialect (routes/), error answers (errors), request middleware
(middleware), the backend's health (health), the cross-request batching scheduler
(scheduler), metrics, and ``reranker serve`` (server)."""
