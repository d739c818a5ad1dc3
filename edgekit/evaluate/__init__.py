"""Evaluation on the host: quality on held-back data, latency measured as the device runtime runs it."""
