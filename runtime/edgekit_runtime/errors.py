"""Errors raised by the runtime. Every message names the value, the reason and the fix."""


class EdgekitError(Exception):
    """Base class: a user-facing error with a message that says how to fix it."""


class ProfileError(EdgekitError):
    """A device profile is malformed or unknown."""


class BundleError(EdgekitError):
    """A bundle is malformed, tampered with, or cannot run here."""


class SignatureError(BundleError):
    """A bundle's signature is missing, wrong or cannot be checked (or a signing key is unusable)."""


class BackendError(EdgekitError):
    """No inference backend could run the bundle on this machine."""


class InputError(EdgekitError):
    """An input given to predict (a text, a batch size) cannot be used as given."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index  # position of the offending text, when one text is at fault
