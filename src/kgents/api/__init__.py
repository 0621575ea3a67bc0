"""HTTP layer: FastAPI app, routes, SSE framing and auth dependencies. Calls services only."""
