"""Load a bundle (a directory or a .tar from archive_bundle) and run it on texts.

``load`` verifies every sha256 before reading anything else, rebuilds the embedded device
profile, checks the manifest against the task and the graph, then picks a backend. Everything
that can be wrong with a bundle is found at load time, not at the first text.
"""

from __future__ import annotations

import logging
import shutil
import weakref
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .backends.base import Backend
from .backends.select import select_backend
from .backends.tensorrt import check_engine_plan
from .bundle.archive import materialize
from .bundle.format import MANIFEST, manifest_value, read_manifest, verify_bundle
from .bundle.signing import SIGNATURE, check_signature, signature_key
from .errors import BackendError, BundleError, InputError, SignatureError
from .generation.decoder import DecoderSpec, DecoderTokenizer, smoke_feeds
from .generation.generate import GenerationConfig, Generator
from .profile import BACKENDS, PRECISIONS, DeviceProfile, profile_from_dict
from .tasks import TaskHead, get_task
from .tokenizer import TextEncoder, check_texts

log = logging.getLogger("edgekit_runtime")

SMOKE_TEXT = "edgekit runtime smoke test"
CAUSAL_LM = "causal-lm"


def bundle_profile(manifest: Mapping[str, Any]) -> DeviceProfile:
    """The device profile embedded in the manifest, validated and checked against its sha256."""
    name = manifest_value(manifest, "profile.name", str)
    data = manifest_value(manifest, "profile.data", dict)
    recorded = manifest_value(manifest, "profile.sha256", str)
    profile = profile_from_dict(data, source=f"bundle:{name}")
    if profile.name != name or profile.sha256 != recorded:
        raise BundleError(f"{MANIFEST}: profile section says {name!r} sha256 {recorded[:12]}..., its data is "
                          f"{profile.name!r} sha256 {profile.sha256[:12]}.... Fix: recompile the bundle (the host "
                          f"writes DeviceProfile.sha256 of the same data).")
    return profile


def _check_model_section(manifest: Mapping[str, Any], profile: DeviceProfile) -> str:
    file = manifest_value(manifest, "model.file", str)
    if file not in manifest["files"]:
        raise BundleError(f"{MANIFEST}: model.file {file!r} is not among the bundle's hashed files "
                          f"{sorted(manifest['files'])}. Fix: recompile the bundle.")
    precision = manifest_value(manifest, "model.precision", str)
    if precision not in PRECISIONS or precision not in profile.precisions:
        raise BundleError(f"{MANIFEST}: model.precision {precision!r} is not one profile '{profile.name}' allows "
                          f"({list(profile.precisions)}). Fix: recompile with a precision the profile allows.")
    max_length = manifest_value(manifest, "tokenizer.max_length", int)
    if max_length > profile.max_sequence_length:
        raise BundleError(f"{MANIFEST}: tokenizer.max_length {max_length} exceeds profile '{profile.name}' "
                          f"max_sequence_length {profile.max_sequence_length}. Fix: recompile with a shorter max_length.")
    return file


def _is_qdq_int8(manifest: Mapping[str, Any]) -> bool:
    """An int8 graph in QuantizeLinear/DequantizeLinear form (QAT or static PTQ), per the manifest."""
    model = manifest.get("model") or {}
    return model.get("precision") == "int8" and (model.get("int8") or {}).get("format") == "qdq"


def _check_graph_io(manifest: Mapping[str, Any], task: TaskHead, backend: Backend) -> None:
    """The manifest's IO spec must describe the graph the backend loaded."""
    graph_in = {s.name: s.dtype for s in backend.inputs}
    listed_in = {s.get("name"): s.get("dtype") for s in manifest["model"]["inputs"]}
    if graph_in != listed_in:
        raise BundleError(f"{MANIFEST}: model.inputs {listed_in} do not match the graph's inputs {graph_in}. "
                          f"Fix: recompile the bundle (the manifest's IO spec is read from the exported graph).")
    graph_out = {s.name for s in backend.outputs}
    listed_out = {s.get("name") for s in manifest["model"]["outputs"]}
    if graph_out != listed_out or not set(task.outputs) <= graph_out:
        raise BundleError(f"{MANIFEST}: model.outputs {sorted(map(str, listed_out))} / graph outputs "
                          f"{sorted(graph_out)}; task {task.name} reads {list(task.outputs)}. Fix: recompile the bundle.")


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InputError(f"{name}={value!r}: expected a positive integer. Fix: pass e.g. {name}=32.")
    return value


class BundleModel:
    """A verified bundle with its tokenizer and a working backend. Use ``load`` to get one."""

    def __init__(self, path: Path, bundle_dir: Path, manifest: dict[str, Any], profile: DeviceProfile,
                 task: TaskHead, encoder: TextEncoder, backend: Backend, reasons: list[str], tmp: Path | None):
        self.path = path  # what the caller passed (directory or archive)
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.profile = profile
        self.task = task
        self.encoder = encoder
        self.backend = backend
        self.backend_reasons = reasons  # why earlier backends of the profile were passed over
        # An extracted archive lives as long as the model; removed on close(), collection or exit.
        self._cleanup = weakref.finalize(self, shutil.rmtree, tmp, True) if tmp else None

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["task"].get("labels", []))

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def _batches(self, texts: Sequence[str], batch_size: int):
        """Yield (indices, encoded batch, outputs); texts are grouped by length to pad less."""
        texts = check_texts(texts)
        _positive_int("batch_size", batch_size)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            batch = self.encoder.encode_batch([texts[i] for i in indices])
            yield indices, batch, self.backend.run(batch.feeds)

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[dict[str, Any]]:
        """One result per text, in input order: label, score, probabilities, truncated."""
        texts = check_texts(texts)
        results: list[dict[str, Any] | None] = [None] * len(texts)
        for indices, batch, outputs in self._batches(texts, batch_size):
            items = self.task.postprocess(outputs, self.manifest["task"], batch)
            for i, item, truncated in zip(indices, items, batch.truncated):
                item["truncated"] = truncated
                results[i] = item
        return results  # type: ignore[return-value]

    def logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """The raw task output (``logits``) for each text, in input order."""
        name = self.task.outputs[0]
        parts: list[tuple[list[int], np.ndarray]] = [(indices, outputs[name])
                                                     for indices, _, outputs in self._batches(texts, batch_size)]
        if not parts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        out = np.empty((sum(len(i) for i, _ in parts),) + parts[0][1].shape[1:], dtype=parts[0][1].dtype)
        for indices, values in parts:
            out[indices] = values
        return out

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> "BundleModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, task={self.task.name!r}, profile={self.profile.name!r}, "
                f"backend={self.backend_name!r})")


class CausalLMModel(BundleModel):
    """A causal-LM bundle (task "causal-lm"): ``generate`` text; there is no ``predict``."""

    def __init__(self, *args: Any, decoder: tuple[Any, Any]):
        super().__init__(*args)

        self.spec, defaults = decoder
        self.generator = Generator(self.backend, self.spec, self.encoder, defaults)

    @property
    def defaults(self):
        """The bundle's generation defaults (a GenerationConfig; ``generate(**options)`` overrides them)."""
        return self.generator.defaults

    def generate(self, prompts: Sequence[Any], config: Any = None, *, stream: Any = None, **options: Any) -> list:
        """Generate for each prompt (a string, a list of chat messages, or token ids); see
        ``Generator.generate``. Returns one GenerationResult per prompt, in order."""
        return self.generator.generate(prompts, config, stream=stream, **options)

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[dict[str, Any]]:
        raise InputError(f"{self.path}: a causal-lm bundle generates text; it does not classify. "
                         f"Fix: call model.generate(prompts) (CLI: edgekit-run generate).")

    def logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        raise InputError(f"{self.path}: a causal-lm bundle has no per-text logits. Fix: call model.generate(prompts).")


def load(path: str | Path, *, verify: bool = True, backend: str | None = None,
         threads: int | None = None, public_key=None, require_signature: bool = False) -> BundleModel:
    """Verify and load a bundle directory or .tar archive; pick the first backend that works here.
    A causal-lm bundle gives a ``CausalLMModel`` (``generate``); the others a ``BundleModel`` (``predict``).

    ``backend`` forces one of the profile's backends (e.g. "ort-cpu"); ``threads`` sets
    onnxruntime's intra-op threads. ``public_key`` (PEM path or bytes, or an Ed25519PublicKey)
    makes a present manifest.sig verify against it; ``require_signature`` also refuses an
    unsigned bundle (see signing.check_signature; needs the ``signing`` extra).
    """
    path = Path(path)
    if not verify and (public_key is not None or require_signature):
        raise SignatureError(f"{path}: verify=False with a signature check: the signature covers the manifest, "
                             f"and only verify=True checks the files against it. Fix: keep verify=True.")
    public_key = signature_key(public_key, require_signature)  # a bad key fails before any extraction
    bundle_dir, tmp = materialize(path)
    try:
        if verify:
            manifest = verify_bundle(bundle_dir)
            signature = check_signature(bundle_dir, public_key, require=require_signature, manifest=manifest)
            if public_key is not None and signature is None:
                log.warning("%s: unsigned (no %s); loaded without a signature check "
                            "(require_signature=True refuses unsigned bundles)", path, SIGNATURE)
        else:
            manifest = read_manifest(bundle_dir)
            log.warning("%s: loaded WITHOUT verifying file hashes (verify=False)", path)
        profile = bundle_profile(manifest)
        task = get_task(manifest)
        model_file = _check_model_section(manifest, profile)
        plan = check_engine_plan(manifest.get("engine_plan"),
                                 [s.get("name") for s in manifest_value(manifest, "model.inputs", list)
                                  if isinstance(s, dict)])
        decoder = None
        if task.name == CAUSAL_LM:  # generation: its own tokenizer use, smoke feed and model class

            spec = DecoderSpec.from_manifest(manifest)
            encoder = DecoderTokenizer.from_manifest(bundle_dir, manifest, spec)
            decoder = (spec, GenerationConfig.from_manifest(manifest["task"]))

            def feeds(candidate: Backend):
                return smoke_feeds(candidate, spec, encoder.encode(SMOKE_TEXT, add_special_tokens=True))
        else:
            encoder = TextEncoder.from_manifest(bundle_dir, manifest)

            def feeds(candidate: Backend):
                return encoder.encode([SMOKE_TEXT])[0]
        if backend is not None and backend not in profile.backends:
            raise BackendError(f"backend {backend!r} is not one profile '{profile.name}' lists "
                               f"({list(profile.backends)}; all known: {list(BACKENDS)}). "
                               f"Fix: choose one of the profile's backends, or leave it unset.")

        def smoke(candidate: Backend):
            _check_graph_io(manifest, task, candidate)
            return feeds(candidate)

        chosen, reasons = select_backend(bundle_dir / model_file, profile, threads=threads,
                                         backends=None if backend is None else [backend], feed_builder=smoke,
                                         # QDQ int8 only: dynamic (QOperator) graphs keep ORT's fusions.
                                         quantized=_is_qdq_int8(manifest),
                                         engine_plan=plan,
                                         # Unverified files may not be what the manifest hashed: the TensorRT
                                         # engine caches then key on the file's own sha256.
                                         model_sha256=manifest["files"][model_file]["sha256"] if verify else None)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("loaded %s: task %s, profile %s, backend %s", path, task.name, profile.name, chosen.name)
    if decoder is not None:
        return CausalLMModel(path, bundle_dir, manifest, profile, task, encoder, chosen, reasons, tmp, decoder=decoder)
    return BundleModel(path, bundle_dir, manifest, profile, task, encoder, chosen, reasons, tmp)
