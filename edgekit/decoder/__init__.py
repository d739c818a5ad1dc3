"""Decoder-only causal LMs (Qwen2 / DeepSeek-R1-Distill-Qwen, Llama): model knowledge, pruning,
distillation and the KV-cache export. The graph and manifest contract is docs/decoder.md."""
