"""edgekit-runtime: verify, load and run edgekit bundles on the device (no torch, no network)."""

__version__ = "0.1.0"

from .backends import Backend, OrtBackend, select_backend  # noqa: E402
from .bundle import SCHEMA_VERSION, archive_bundle, read_manifest, verify_bundle, write_bundle  # noqa: E402
from .errors import BackendError, BundleError, EdgekitError, InputError, ProfileError, SignatureError  # noqa: E402
from .model import BundleModel, load  # noqa: E402
from .signing import SIGNATURE, sign_bundle, verify_signature  # noqa: E402
from .profile import DeviceProfile, Tolerance, load_profile_file, profile_from_dict  # noqa: E402
from .tasks import POSTPROCESSORS  # noqa: E402
from .tokenizer import TextEncoder  # noqa: E402

__all__ = [
    "load", "BundleModel",
    "SCHEMA_VERSION", "archive_bundle", "read_manifest", "verify_bundle", "write_bundle",
    "SIGNATURE", "sign_bundle", "verify_signature",
    "BackendError", "BundleError", "EdgekitError", "InputError", "ProfileError", "SignatureError",
    "DeviceProfile", "Tolerance", "load_profile_file", "profile_from_dict",
    "Backend", "OrtBackend", "select_backend", "POSTPROCESSORS", "TextEncoder",
]
