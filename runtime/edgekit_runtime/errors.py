"""Errors raised by the runtime. Every message names the value, the reason and the fix."""


class EdgekitError(Exception):
    """Base class: a user-facing error with a message that says how to fix it."""


class ProfileError(EdgekitError):
    """A device profile is malformed or unknown."""


class BundleError(EdgekitError):
    """A bundle is malformed, tampered with, or cannot run here."""


class BackendError(EdgekitError):
    """No inference backend could run the bundle on this machine."""
