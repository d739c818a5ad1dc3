"""Export to ONNX, per-profile graph rewrites, op-support checks."""
