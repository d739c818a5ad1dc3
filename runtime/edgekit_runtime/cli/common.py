"""What every edgekit-run command shares: the program name and exit codes, the usage error, the
argument types (each names the bad value and what it should be), and the signature options."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from ..bundle.signing import signature_key

PROG = "edgekit-run"
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad argument or combination: exit code 2, one line naming it and the fix."""


def _argument_type(convert: Callable[[str], Any], ok: Callable[[Any], bool], problem: str) -> Callable[[str], Any]:
    """An argparse ``type``: ``convert`` the text, then refuse values ``ok`` rejects with ``problem``
    (formatted with ``value``)."""
    what = "an integer" if convert is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(problem.format(value=value))
        return value

    return parse


positive_int = _argument_type(int, lambda v: v > 0, "{value} must be a positive integer")
non_negative_int = _argument_type(int, lambda v: v >= 0, "{value} must be an integer >= 0")
temperature = _argument_type(float, lambda v: 0 < v < float("inf"),
                             "{value:g} must be > 0 (for deterministic output use --greedy, not temperature 0)")
top_p = _argument_type(float, lambda v: 0 < v <= 1,
                       "{value:g} is not in (0, 1] (e.g. 0.9; 1 turns nucleus filtering off)")
port = _argument_type(int, lambda v: 0 <= v <= 65535, "{value} is not a port (0..65535; 0 picks a free one)")
milliseconds = _argument_type(float, lambda v: 0 <= v < float("inf"), "{value} must be a number of milliseconds >= 0")


def one_line(message: str) -> str:
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    out = lines[0] if lines else ""
    for line in lines[1:]:
        out += (" " if out.endswith((":", ".")) else "; ") + line
    return out


# ---------------------------------------------------------------- signatures (every command that loads a bundle)

def add_signature_arguments(parser: argparse.ArgumentParser) -> None:
    """--public-key and --require-signature; read them back with ``signature_key_from_args``."""
    group = parser.add_argument_group("signature (optional; needs: pip install \"edgekit-runtime[signing]\")")
    group.add_argument("--public-key", metavar="PEM", default=None,
                       help="ed25519 public key you trust (public.pem from `edgekit keygen`): a bundle that "
                            "carries manifest.sig must verify against it, else it is refused")
    group.add_argument("--require-signature", action="store_true",
                       help="also refuse a bundle without manifest.sig (needs --public-key)")


def signature_key_from_args(args: argparse.Namespace) -> Any:
    """The loaded --public-key (None without it); checked before any bundle is opened."""
    if args.require_signature and args.public_key is None:
        raise UsageError("--require-signature needs --public-key PEM: a bundle cannot vouch for itself (whoever "
                         "changed it can also rewrite the key id it carries), so its signature must be checked "
                         "against a public key you trust")
    return signature_key(args.public_key)
