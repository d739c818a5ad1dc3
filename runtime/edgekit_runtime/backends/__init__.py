"""Backends: ONNX Runtime (TensorRT, CUDA, CPU providers) and the native TensorRT engine, built and cached
on the device from the bundle's engine plan; select picks the first that works on this machine."""
