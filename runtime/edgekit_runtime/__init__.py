"""edgekit-runtime: verify, load and run edgekit bundles on the device (no torch, no network)."""

__version__ = "0.1.0"

from .bundle import SCHEMA_VERSION, archive_bundle, read_manifest, verify_bundle, write_bundle  # noqa: E402
from .errors import BackendError, BundleError, EdgekitError, ProfileError  # noqa: E402
from .profile import DeviceProfile, Tolerance, load_profile_file, profile_from_dict  # noqa: E402

__all__ = [
    "SCHEMA_VERSION", "archive_bundle", "read_manifest", "verify_bundle", "write_bundle",
    "BackendError", "BundleError", "EdgekitError", "ProfileError",
    "DeviceProfile", "Tolerance", "load_profile_file", "profile_from_dict",
]
