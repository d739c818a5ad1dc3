"""Chat templates: the bundle's jinja template rendered in a sandbox, as transformers renders it.

The template comes from the manifest (``task.chat_template``, the tokenizer's own) and is
rendered with ``ImmutableSandboxedEnvironment``: a template is data from the bundle, and the
sandbox keeps it from reaching Python attributes or mutating what it is given.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Mapping, Sequence

from ..errors import BundleError, InputError

ROLES = ("system", "user", "assistant", "tool")


def check_messages(messages: Any, where: str = "messages") -> list[dict[str, Any]]:
    """A conversation: a non-empty list of {"role", "content"} objects. Errors name the index."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError(f"{where} is {type(messages).__name__}, expected a non-empty list of "
                         f'{{"role": ..., "content": ...}} objects. Fix: pass [{{"role": "user", "content": "..."}}].')
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise InputError(f"{where}[{i}] is not an object with string 'role' and 'content'. "
                             f'Fix: pass {{"role": "user", "content": "..."}}.', index=i)
        if message["role"] not in ROLES:
            # the role is not echoed: it is the caller's text, which errors never quote
            raise InputError(f"{where}[{i}] has a role chat templates do not know; they know {list(ROLES)}. "
                             f"Fix: use one of those roles.", index=i)
    return [dict(m) for m in messages]


class ChatTemplate:
    """A compiled chat template; ``render(messages)`` gives the prompt text, generation prompt included."""

    def __init__(self, source: str, special_tokens: Mapping[str, str | None]):
        try:
            from jinja2 import TemplateError
            from jinja2.exceptions import SecurityError
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:  # pragma: no cover - jinja2 is a dependency; a broken install lands here
            raise BundleError("the bundle has a chat template but jinja2 is not installed. "
                              "Fix: pip install 'jinja2>=3.1' (a dependency of edgekit-runtime).") from None

        class Refusal(TemplateError):
            """The template's own raise_exception: it refuses the messages (e.g. roles must alternate)."""

        def raise_exception(message: str):
            raise Refusal(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        # transformers' tojson keeps non-ASCII as is; jinja's default would escape it for HTML.
        env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False: json.dumps(
            x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise BundleError(f"manifest.json: task.chat_template does not compile ({type(exc).__name__}: {exc}). "
                              f"Fix: recompile the bundle from a tokenizer with a valid chat template.") from None
        self._refusal, self._security, self._error = Refusal, SecurityError, TemplateError
        self.special_tokens = {k: v for k, v in special_tokens.items() if v is not None}

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` (checked), ending with the assistant's opening."""
        messages = check_messages(messages)
        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         **self.special_tokens)
        except self._refusal as exc:
            raise InputError(f"the chat template refused the messages: {str(exc).rstrip('.')}. Fix: pass a "
                             f"conversation the model's template accepts (usually alternating user/assistant, "
                             f"ending with user).") from None
        except self._security as exc:
            raise BundleError(f"manifest.json: task.chat_template tried something the sandbox forbids "
                              f"({str(exc).rstrip('.')}). Fix: use a bundle whose chat template you trust; "
                              f"recompile it from the model's tokenizer.") from None
        except self._error as exc:
            raise BundleError(f"manifest.json: task.chat_template failed to render ({type(exc).__name__}: "
                              f"{str(exc).rstrip('.')}). Fix: recompile the bundle from a tokenizer with a "
                              f"working chat template.") from None
        except Exception as exc:  # a template bug, not the caller's messages; its message may quote them
            raise BundleError(f"manifest.json: task.chat_template failed to render ({type(exc).__name__}). "
                              f"Fix: recompile the bundle from a tokenizer with a working chat template.") from None
