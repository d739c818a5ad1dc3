"""Budgets: choose the student shape (layers, heads, FFN neurons) and precision that fit a latency
and a size budget. ``cost`` measures this host and predicts latency and bytes for any shape.

Nothing is imported here on purpose: ``import edgekit.budget`` stays free of torch and ONNX Runtime.
"""
