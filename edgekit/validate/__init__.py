"""Graph validation: ONNX Runtime against PyTorch at the profile's tolerance, fails closed."""
