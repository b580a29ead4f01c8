"""The HTTP service: FastAPI app factory, cross-request batching scheduler, metrics."""
