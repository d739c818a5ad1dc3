"""What serve accepts: the JSON bodies of POST /predict ({"texts": [...]}) and POST /generate
({"prompt": str} or {"messages": [...]}, plus generation options), checked by the runtime's own
rules. Every refusal is a RequestError with the status, the reason and the fix, and never quotes
the input text."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

from ..errors import InputError
from ..generation.chat import check_messages
from ..generation.config import GenerationConfig
from ..tokenizer import check_texts

REQUEST_KEYS = ("texts",)
PROMPT_KEYS = ("prompt", "messages")
GENERATE_EXAMPLE = '{"prompt": "What is 17 * 23?", "max_new_tokens": 128}'


def generate_options() -> list[str]:

    return [f.name for f in fields(GenerationConfig) if f.name != "batch_size"]


class RequestError(Exception):
    """A request the server refuses: status, what is wrong (never the text), how to fix it."""

    def __init__(self, status: int, error: str, fix: str, headers: dict[str, str] | None = None,
                 close: bool = False):
        super().__init__(error)
        self.status, self.error, self.fix = status, error, fix
        self.headers = headers or {}
        self.close = close  # the body was cut short: the connection cannot carry another request


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _json_object(body: bytes, example: str, wanted: str) -> dict[str, Any]:
    """The body as a JSON object, or a RequestError saying what is wrong and showing ``example``."""
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"the body is not valid UTF-8 (byte {exc.start}: {exc.reason})",
                           "encode the JSON body as UTF-8") from None
    try:
        data = json.loads(decoded)
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"the body is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
                           f"send {example}") from None
    except RecursionError:
        raise RequestError(400, "the body is JSON nested too deeply to parse", f"send {example}") from None
    if not isinstance(data, dict):
        raise RequestError(400, f"the body is a JSON {_json_type(data)}, expected an object with {wanted}",
                           f"send {example}; a bare list is not accepted")
    return data


def _input_error(exc: InputError) -> RequestError:
    error, _, fix = str(exc).partition(" Fix: ")
    return RequestError(400, error.replace("prompt 0", "the prompt"), fix.rstrip(".") or "fix that field")


def parse_predict_body(body: bytes, max_texts: int) -> list[str]:
    """The texts of a POST /predict body, or a RequestError naming the index and type at fault."""
    data = _json_object(body, '{"texts": ["first text", "second text"]}', "a 'texts' list")
    unknown = sorted(k for k in data if k not in REQUEST_KEYS)
    if unknown or "texts" not in data:
        raise RequestError(400, f"the body has keys {sorted(data)[:10]}; expected exactly {list(REQUEST_KEYS)}",
                           'send {"texts": [...]}')
    texts = data["texts"]
    if not isinstance(texts, list):
        kind = "a single string" if isinstance(texts, str) else f"a JSON {_json_type(texts)}"
        raise RequestError(400, f"'texts' is {kind}, expected a list of strings", 'wrap it: {"texts": [text]}')
    if not texts:
        raise RequestError(400, "'texts' is an empty list; there is nothing to classify", "send at least one text")
    if len(texts) > max_texts:
        raise RequestError(413, f"'texts' holds {len(texts)} texts, more than this server's --max-texts {max_texts}",
                           f"split the request into requests of at most {max_texts} texts")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(400, f"text {i} is a JSON {_json_type(text)}, expected a string",
                               "send every text as a JSON string")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # JSON "\ud800" escapes decode to a lone surrogate
            raise RequestError(400, f"text {i} holds an unpaired UTF-16 surrogate escape, which is not text",
                               "send valid Unicode (pair the surrogates, or remove them)") from None
    try:
        check_texts(texts)  # the runtime's own rules (empty or blank texts), so serve and predict agree
    except InputError as exc:
        error, _, fix = str(exc).partition(" Fix: ")
        raise RequestError(400, error, fix.rstrip(".") or "fix that text") from None
    return texts


def parse_generate_body(body: bytes, model: Any) -> tuple[Any, Any]:
    """(prepared prompt, GenerationConfig) of a POST /generate body: {"prompt": str} or
    {"messages": [...]}, plus generation options; a RequestError names the field at fault."""
    data = _json_object(body, GENERATE_EXAMPLE, "a 'prompt' string or a 'messages' list")
    options = generate_options()
    unknown = sorted(k for k in data if k not in (*PROMPT_KEYS, *options))
    given = [k for k in PROMPT_KEYS if k in data]
    if unknown or len(given) != 1:
        what = f"unknown keys {unknown[:10]}" if unknown else ("both 'prompt' and 'messages'" if given
                                                                else "neither 'prompt' nor 'messages'")
        raise RequestError(400, f"the body has {what}; it takes one of {list(PROMPT_KEYS)} and the options "
                                f"{options}", f"send {GENERATE_EXAMPLE}")
    prompt = data[given[0]]
    if given[0] == "prompt":
        if not isinstance(prompt, str):
            raise RequestError(400, f"'prompt' is a JSON {_json_type(prompt)}, expected a string",
                               'send the prompt as a string, or a chat as "messages"')
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(400, "'prompt' holds an unpaired UTF-16 surrogate escape, which is not text",
                               "send valid Unicode") from None
        if not prompt.strip():
            raise RequestError(400, "'prompt' is empty or only whitespace; there is nothing to continue",
                               "give the prompt content")
    elif not isinstance(prompt, list) or not prompt:
        raise RequestError(400, f"'messages' is a JSON {_json_type(prompt)}{' (empty)' if prompt == [] else ''}, "
                                f"expected a non-empty array of {{\"role\", \"content\"}} objects",
                           'send "messages": [{"role": "user", "content": "..."}]')
    try:
        if given[0] == "messages":
            check_messages(prompt, "messages")
        config = model.defaults.replace(**{k: data[k] for k in options if k in data})
        if given[0] == "messages" and config.chat is None:
            config = config.replace(chat=True)
        prepared = model.generator.prepare([prompt], config)[0]
    except InputError as exc:
        raise _input_error(exc) from None
    return prepared, config
