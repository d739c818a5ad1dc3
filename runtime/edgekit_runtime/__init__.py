"""edgekit-runtime: verify, load and run edgekit bundles on the device (no torch, no network)."""

__version__ = "0.1.0"

import os as _os
import sys as _sys

# onnxruntime >= 1.29 on Linux queues telemetry (process info, paths, a device id) in
# ~/.cache/Microsoft/DeveloperTools and uploads it when it can: on a hospital terminal, data
# leaving the device. ORT_DISABLE_TELEMETRY=1 turns all of it off, but only if set before
# onnxruntime is first imported; a user who set it explicitly keeps their value.
if "onnxruntime" not in _sys.modules:
    _os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
elif _os.environ.get("ORT_DISABLE_TELEMETRY") != "1":
    import logging as _logging

    _logging.getLogger("edgekit_runtime").warning(
        "onnxruntime was imported before edgekit_runtime, so its telemetry could not be turned off. Fix: set "
        "ORT_DISABLE_TELEMETRY=1 in the environment, or import edgekit_runtime first.")

from .backends.base import Backend  # noqa: E402
from .backends.ort import OrtBackend  # noqa: E402
from .backends.select import select_backend  # noqa: E402
from .bundle.format import SCHEMA_VERSION, archive_bundle, read_manifest, verify_bundle, write_bundle  # noqa: E402
from .errors import BackendError, BundleError, EdgekitError, InputError, ProfileError, SignatureError  # noqa: E402
from .model import BundleModel, CausalLMModel, load  # noqa: E402
from .generation.generate import GenerationConfig, GenerationResult, Generator  # noqa: E402
from .bundle.signing import SIGNATURE, sign_bundle, verify_signature  # noqa: E402
from .profile import DeviceProfile, Tolerance, load_profile_file, profile_from_dict  # noqa: E402
from .tasks import POSTPROCESSORS  # noqa: E402
from .tokenizer import TextEncoder  # noqa: E402

__all__ = [
    "load", "BundleModel", "CausalLMModel", "GenerationConfig", "GenerationResult", "Generator",
    "SCHEMA_VERSION", "archive_bundle", "read_manifest", "verify_bundle", "write_bundle",
    "SIGNATURE", "sign_bundle", "verify_signature",
    "BackendError", "BundleError", "EdgekitError", "InputError", "ProfileError", "SignatureError",
    "DeviceProfile", "Tolerance", "load_profile_file", "profile_from_dict",
    "Backend", "OrtBackend", "select_backend", "POSTPROCESSORS", "TextEncoder",
]
