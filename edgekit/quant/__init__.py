"""int8 quantization. Import the submodules directly (this file imports nothing, so the torch-free
ONNX passes stay torch-free):

    fake        QAT: int8 fake quant for nn.Linear (QATConfig, prepare_qat, calibrate, enable_fake_quant),
                exported as standard QuantizeLinear/DequantizeLinear at opset 13
    onnx_int8   ONNX post-passes: fold_weight_quantize (int8 weights in the file), quantize_embeddings
"""
