"""Tiny exported transformer graphs for export and rewrite tests (a plain module: import it).

Graphs come from random-weight HF models exported exactly as edgekit does: the legacy exporter,
opset 13, eager attention, dynamic batch and sequence axes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

ARCHS = ("bert", "distilbert", "roberta")
VOCAB = 100
# Wider than HF's 0.02 init so activations reach the range where GELU approximations differ.
INIT_RANGE = 0.2
_EXPORTED: dict[str, bytes] = {}


def tiny_model(arch: str = "bert"):
    """A random 2-layer, hidden-32, 3-label sequence classifier of ``arch`` (eager attention)."""
    import torch
    import transformers as tf

    common = dict(vocab_size=VOCAB, max_position_embeddings=64, num_labels=3, initializer_range=INIT_RANGE,
                  pad_token_id=0)
    if arch == "bert":
        cls, cfg = tf.BertForSequenceClassification, tf.BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **common)
    elif arch == "roberta":
        cls, cfg = tf.RobertaForSequenceClassification, tf.RobertaConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **common)
    elif arch == "distilbert":
        cls, cfg = tf.DistilBertForSequenceClassification, tf.DistilBertConfig(
            dim=32, n_layers=2, n_heads=4, hidden_dim=64, **common)
    else:
        raise ValueError(f"unknown tiny arch {arch!r}; use one of {ARCHS}")
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = cls(cfg).eval()
    model.config._attn_implementation = "eager"
    return model


def input_names(arch: str) -> list[str]:
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if arch == "bert" else [])


def export_tiny(tmp_path: Path, arch: str = "bert") -> Path:
    """Export the tiny ``arch`` classifier to ``tmp_path/tiny-<arch>.onnx`` (cached per process)."""
    if arch not in _EXPORTED:
        import io

        import torch

        model, names = tiny_model(arch), input_names(arch)
        feeds = tiny_inputs(2, 8)
        args = tuple(torch.from_numpy(feeds[n]) for n in names)
        axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
        buf = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            # Tracer and aten::index notes the legacy exporter always prints for HF masks.
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, buf, dynamo=False, opset_version=13, input_names=names,
                              output_names=["logits"], dynamic_axes=axes)
        _EXPORTED[arch] = buf.getvalue()
    path = Path(tmp_path) / f"tiny-{arch}.onnx"
    path.write_bytes(_EXPORTED[arch])
    return path


def tiny_inputs(batch: int, seq: int, with_padding: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """Random int64 token inputs; with padding, rows after the first end in pad tokens (id 0)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, VOCAB, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    types = np.zeros((batch, seq), dtype=np.int64)
    for row in range(batch):
        length = int(rng.integers(1, seq)) if with_padding and row > 0 and seq > 1 else seq
        ids[row, length:] = 0
        mask[row, length:] = 0
        types[row, length // 2:length] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def run_onnx(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``model`` in onnxruntime (CPU), feeding the inputs it declares cast to its dtypes."""
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else Path(model).read_bytes()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    dtypes = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
              "tensor(float16)": np.float16, "tensor(bool)": np.bool_}
    return sess.run(None, {i.name: feeds[i.name].astype(dtypes[i.type]) for i in sess.get_inputs()})


def single_op_model(nodes: list, inputs: list, outputs: list, initializers: list = ()) -> onnx.ModelProto:
    """A hand-built opset-13 model from helper-made nodes, value infos and initializers."""
    graph = helper.make_graph(nodes, "hand", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def minimal_profile(**overrides):
    """A valid CPU DeviceProfile ('test-board'); keyword arguments replace its fields."""
    from edgekit_runtime.profile import profile_from_dict

    data = dict(name="test-board", description="tiny test target", device="test board",
                architecture="aarch64", accelerator="cpu", backends=["ort-cpu"], precisions=["fp32"],
                default_precision="fp32", opset=13, rewrite_rules=[], unsupported_ops=[],
                token_dtype="int64", memory_budget_mb=512, max_sequence_length=128,
                tolerances={"fp32": {"atol": 1e-4, "rtol": 1e-3}})
    return profile_from_dict(data | overrides, source="test-board.toml")
