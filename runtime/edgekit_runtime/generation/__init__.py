"""Causal-LM generation on the device: the KV-cache decoder session, the token loop, sampling, stop
and think handling, incremental detokenizing, chat templates."""
