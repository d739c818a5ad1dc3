"""`edgekit-run serve`: the local HTTP server, request parsing and micro-batching."""
