"""OpenAI's wire format: OpenAI requests as an endpoint's job inputs, jobs as OpenAI responses,
errors in OpenAI's shape. Pure functions, no I/O: api_server/routes/openai.py does the HTTP.

Each request becomes the inputs of one job of the endpoint its model names ([OPENAI] in the
endpoint's TOML). A parameter is either translated into an input, passed through (the
endpoint's own inputs by name, as extensions: `top_k`, `steps`...), accepted at the value that
asks for nothing (`n=1`, `presence_penalty=0`, `user`), or refused with a 400 naming it: never
silently ignored. The endpoint's own validation then checks the values; its errors are named
back as the OpenAI parameters they came from (`max_new_tokens` -> `max_tokens`).
"""

from __future__ import annotations

import array
import base64
import re
import sys
from collections.abc import Mapping
from typing import Any, NamedTuple

from api_server.config import Endpoint
from api_server.fields import validate_inputs
from api_server.httputil import ApiError

# Parameters accepted at these values only (they ask for what the worker does anyway); None
# (JSON null) is always accepted. `user` identifies the caller to OpenAI: nothing to honour.
NEUTRAL: Mapping[str, tuple[Any, ...]] = {
    "n": (1,),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "logprobs": (False,),
    "store": (False,),
    "parallel_tool_calls": (False,),
    "stream": (False,),
    "quality": ("auto", "standard"),
    "background": ("auto",),
    "moderation": ("auto",),
    "response_format": ({"type": "text"},),
    "user": (),  # any value
}

CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
SIZE_PATTERN = re.compile(r"\A([1-9][0-9]{0,4})x([1-9][0-9]{0,4})\Z")
IMAGE_FORMATS = ("url", "b64_json")
EMBEDDING_FORMATS = ("float", "base64")
# Images: inputs set unless the request names them (no client of /v1 sees a preview).
IMAGE_DEFAULTS = {"preview": "none"}


class OpenAIModel(NamedTuple):
    """A model name of `GET /v1/models`: the endpoint that serves it and the inputs it sets."""

    name: str
    endpoint: Endpoint
    inputs: Mapping[str, Any]
    created_s: int  # its endpoint.toml's modification time


class Translated(NamedTuple):
    """An OpenAI request as a job: its inputs, and the OpenAI parameter each input came from
    (to name it in the endpoint's validation errors)."""

    inputs: dict[str, Any]
    params: dict[str, str]


class ChatOptions(NamedTuple):
    """What the route needs of a chat request besides the job's inputs."""

    stream: bool
    include_usage: bool


# ----- requests


def chat_request(
    body: dict[str, Any], endpoint: Endpoint, model_inputs: Mapping[str, Any], max_stop: int = 4
) -> tuple[Translated, ChatOptions]:
    """A `/v1/chat/completions` body as the inputs of a chat job; 400 naming every parameter
    that is wrong or cannot be honoured (more than max_stop stop strings, say)."""
    errors: dict[str, str] = {}
    job = _Job(endpoint, model_inputs, errors)
    job.set("chat_context", "messages", _messages(body.get("messages"), errors))
    for param, target in (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed")):
        job.set(target, param, body.get(param))
    tokens = [p for p in ("max_completion_tokens", "max_tokens") if body.get(p) is not None]
    if len(tokens) == 2 and body[tokens[0]] != body[tokens[1]]:
        errors["max_tokens"] = "give max_completion_tokens or max_tokens, not two values"
    elif tokens:
        job.set("max_new_tokens", tokens[0], body[tokens[0]])
    job.set("stop", "stop", _stop(body.get("stop"), max_stop, errors))
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        errors["stream"] = f"must be true or false (got {_show(stream)})"
    include_usage = _include_usage(body.get("stream_options"), stream, errors)
    handled = {"model", "messages", "temperature", "top_p", "seed", "max_completion_tokens",
               "max_tokens", "stop", "stream", "stream_options"}
    job.pass_through(body, handled, {"chat_context", "max_new_tokens"})
    return job.done(), ChatOptions(stream is True, include_usage)


def images_request(
    body: dict[str, Any], endpoint: Endpoint, model_inputs: Mapping[str, Any],
    image: str | None = None,
) -> tuple[Translated, str]:
    """A `/v1/images/generations` body (or an edit's form, with its image as a data URL) as
    the inputs of an image job, and the response_format asked for (url or b64_json)."""
    errors: dict[str, str] = {}
    job = _Job(endpoint, model_inputs, errors)
    prompt = body.get("prompt")
    if prompt is None:
        errors["prompt"] = "is required"
    job.set("prompt", "prompt", prompt)
    job.set("num_images", "n", body.get("n"))
    size = body.get("size")
    if size not in (None, "auto"):
        match = SIZE_PATTERN.match(size) if isinstance(size, str) else None
        if match is None:
            errors["size"] = f"must be WIDTHxHEIGHT in pixels, e.g. 1024x1024 (got {_show(size)})"
        else:
            job.set("width", "size", int(match[1]))
            job.set("height", "size", int(match[2]))
    response_format = body.get("response_format") or "url"
    if response_format not in IMAGE_FORMATS:
        errors["response_format"] = f"must be url or b64_json (got {_show(response_format)})"
    job.set("output_format", "output_format", body.get("output_format"))
    if image is not None:
        job.set("image", "image", image)
    handled = {"model", "prompt", "n", "size", "response_format", "output_format", "image"}
    job.pass_through(body, handled, {"prompt", "num_images", "width", "height", "image"})
    for name, value in IMAGE_DEFAULTS.items():
        if name in endpoint.inputs and name not in job.inputs:
            job.inputs[name] = value
    return job.done(), response_format


def embeddings_request(
    body: dict[str, Any], endpoint: Endpoint, model_inputs: Mapping[str, Any], max_inputs: int
) -> tuple[Translated, str]:
    """A `/v1/embeddings` body as the inputs of an embeddings job, and the encoding_format
    asked for (float or base64)."""
    errors: dict[str, str] = {}
    job = _Job(endpoint, model_inputs, errors)
    job.set("input", "input", _texts(body.get("input"), max_inputs, errors))
    encoding = body.get("encoding_format") or "float"
    if encoding not in EMBEDDING_FORMATS:
        errors["encoding_format"] = f"must be float or base64 (got {_show(encoding)})"
    job.pass_through(body, {"model", "input", "encoding_format"}, {"input"})
    return job.done(), encoding


class _Job:
    """The inputs of the job being translated, and the errors found on the way."""

    def __init__(self, endpoint: Endpoint, fixed: Mapping[str, Any], errors: dict[str, str]):
        self.endpoint = endpoint
        self.inputs: dict[str, Any] = dict(fixed)
        self.fixed = set(fixed)
        self.params: dict[str, str] = {}
        self.errors = errors

    def set(self, target: str, param: str, value: Any) -> None:
        """Sets input `target` from parameter `param` (nothing for None); an endpoint without
        that input cannot honour the parameter."""
        if value is None:
            return
        if target not in self.endpoint.inputs:
            self.errors.setdefault(param, f"not supported by model endpoint "
                                          f"{self.endpoint.name!r}")
            return
        self.inputs[target] = value
        self.params[target] = param

    def pass_through(self, body: dict[str, Any], handled: set[str], targets: set[str]) -> None:
        """The parameters not translated (not in `handled`): the endpoint's other inputs by
        name (extensions; not the `targets` the translation fills, nor those the model sets),
        neutral values, or a 400 each."""
        own = self.endpoint.inputs.keys() - targets - self.fixed
        for param, value in body.items():
            if param in handled or value is None:
                continue
            if param in own:
                self.inputs[param] = value
            elif param in NEUTRAL and (not NEUTRAL[param] or _same(value, NEUTRAL[param])):
                continue
            else:
                self.errors[param] = ("not supported by this server" if param not in NEUTRAL
                                      else f"only {_show(NEUTRAL[param][0])} is supported "
                                           f"(got {_show(value)})")

    def done(self) -> Translated:
        """The translation; with errors, a 400 naming them and what the endpoint's own
        checks find wrong in the rest (every bad parameter at once)."""
        translated = Translated(self.inputs, self.params)
        if self.errors:
            plain = {k: v for k, v in self.inputs.items()
                     if k not in self.endpoint.inputs or not self.endpoint.inputs[k].binary}
            found = renamed(invalid(validate_inputs(self.endpoint.inputs, plain).errors),
                            self.params).fields
            raise invalid({**self.errors, **{param: why for param, why in found.items()
                                             if not _covered(param, self.errors)}})
        return translated


def _covered(param: str, errors: Mapping[str, str]) -> bool:
    """Whether `errors` already names `param` or a part of it (`messages[0].role`)."""
    return any(k == param or k.startswith((param + ".", param + "[")) for k in errors)


def _same(value: Any, allowed: tuple[Any, ...]) -> bool:
    """`value` is one of `allowed`, bools not taken for numbers (True is not n=1)."""
    return any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed)


def _messages(messages: Any, errors: dict[str, str]) -> list[dict[str, str]] | None:
    """OpenAI messages as a chat_context: roles system (developer), user, assistant; content a
    string or a list of text parts."""
    if messages is None:
        errors["messages"] = "is required"
        return None
    if not isinstance(messages, list) or not messages:
        errors["messages"] = f"must be a non-empty list of messages (got {_show(messages)})"
        return None
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            errors[where] = f"must be an object with role and content (got {_show(message)})"
            continue
        for key in message.keys() - {"role", "content"}:
            if message[key] is not None:
                errors[f"{where}.{key}"] = "not supported by this server (text messages only)"
        role = message.get("role")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            errors[f"{where}.role"] = (f"must be one of {', '.join(CHAT_ROLES)} "
                                       f"(got {_show(role)})")
            continue
        content = _content(message.get("content"), f"{where}.content", errors)
        if content is not None:
            out.append({"role": CHAT_ROLES[role], "content": content})
    return out


def _content(content: Any, where: str, errors: dict[str, str]) -> str | None:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        errors[where] = f"must be a string or a list of text parts (got {_show(content)})"
        return None
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else None
            errors[f"{where}[{j}]"] = (f"only text parts are supported (got "
                                       f"{_show(kind) if kind else _show(part)})")
        elif not isinstance(part.get("text"), str):
            errors[f"{where}[{j}].text"] = f"must be a string (got {_show(part.get('text'))})"
        else:
            texts.append(part["text"])
    return "".join(texts)


def _stop(stop: Any, max_stop: int, errors: dict[str, str]) -> list[str] | None:
    """OpenAI's stop: a string or a list of up to max_stop non-empty strings."""
    stops = [stop] if isinstance(stop, str) else stop
    if stop is None:
        return None
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        errors["stop"] = f"must be a string or a list of non-empty strings (got {_show(stop)})"
    elif len(stops) > max_stop:
        errors["stop"] = f"holds at most {max_stop} strings (got {len(stops)})"
    else:
        return stops
    return None


def _include_usage(options: Any, stream: Any, errors: dict[str, str]) -> bool:
    if options is None:
        return False
    if stream is not True:
        errors["stream_options"] = "only with stream: true"
        return False
    if not isinstance(options, dict):
        errors["stream_options"] = f"must be an object (got {_show(options)})"
        return False
    for key in options.keys() - {"include_usage"}:
        errors[f"stream_options.{key}"] = "not supported by this server"
    usage = options.get("include_usage", False)
    if not isinstance(usage, bool):
        errors["stream_options.include_usage"] = f"must be true or false (got {_show(usage)})"
        return False
    return usage


def _texts(value: Any, max_inputs: int, errors: dict[str, str]) -> list[str] | None:
    """Embeddings input: a string or a list of strings (token arrays are refused)."""
    texts = [value] if isinstance(value, str) else value
    if value is None:
        errors["input"] = "is required"
    elif not isinstance(texts, list) or not texts:
        errors["input"] = f"must be a string or a non-empty list of strings (got {_show(value)})"
    elif not all(isinstance(t, str) for t in texts):
        errors["input"] = "must be a string or a list of strings (token arrays are not supported)"
    elif any(not t for t in texts):
        errors["input"] = "must not hold empty strings"
    elif len(texts) > max_inputs:
        errors["input"] = f"holds at most {max_inputs} texts (got {len(texts)})"
    else:
        return texts
    return None


# ----- errors


_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("not_found_error", None),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def invalid(errors: Mapping[str, str]) -> ApiError:
    """One 400 for every bad parameter."""
    return ApiError(400, "invalid request", errors)


def renamed(error: ApiError, params: Mapping[str, str]) -> ApiError:
    """An endpoint's validation error with its input fields named as the OpenAI parameters
    they came from (`width` -> `size`); other fields as they are."""
    fields: dict[str, str] = {}
    for field, reason in error.fields.items():
        param = params.get(re.split(r"[.\[]", field, maxsplit=1)[0])
        fields.setdefault(param or field, reason)
    return ApiError(error.status, "invalid request", fields, error.headers)


def error_body(error: ApiError, code: str | None = None) -> dict[str, Any]:
    """`{"error": {message, type, param, code}}`: the message names every bad field with its
    reason; `param` is the first of them."""
    kind, default_code = _ERROR_TYPES.get(
        error.status, ("server_error" if error.status >= 500 else "invalid_request_error", None)
    )
    message = error.message
    if error.fields:
        message += ": " + "; ".join(f"{field}: {why}" for field, why in error.fields.items())
    return {"error": {"message": message, "type": kind, "param": next(iter(error.fields), None),
                      "code": code or default_code}}


# ----- responses


def usage(outputs: Mapping[str, Any]) -> dict[str, int]:
    prompt, completion = int(outputs.get("prompt_tokens") or 0), int(
        outputs.get("generated_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def finish_reason(outputs: Mapping[str, Any]) -> str:
    return "length" if outputs.get("finish_reason") == "length" else "stop"


def chat_completion(
    completion_id: str, created_s: int, model: str, outputs: Mapping[str, Any]
) -> dict[str, Any]:
    """A finished chat job as a `chat.completion`."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created_s,
        "model": model,
        "system_fingerprint": None,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": outputs.get("text", ""), "refusal": None},
            "logprobs": None,
            "finish_reason": finish_reason(outputs),
        }],
        "usage": usage(outputs),
    }


def chat_chunk(
    completion_id: str, created_s: int, model: str, delta: dict[str, Any],
    finish: str | None = None, with_usage: bool = False,
) -> dict[str, Any]:
    """One `chat.completion.chunk` of a stream (`usage: null` when usage comes last)."""
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created_s,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if with_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(
    completion_id: str, created_s: int, model: str, outputs: Mapping[str, Any]
) -> dict[str, Any]:
    """The last chunk of a stream with `include_usage`: no choices, the usage."""
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created_s,
            "model": model, "system_fingerprint": None, "choices": [], "usage": usage(outputs)}


def embeddings_response(model: str, outputs: Mapping[str, Any], encoding: str) -> dict[str, Any]:
    """A finished embeddings job (rows as base64 of little-endian float32) as OpenAI's list,
    each embedding a list of floats or that base64 string as it is."""
    rows = outputs.get("embeddings") or []
    tokens = int(outputs.get("prompt_tokens") or 0)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i,
                  "embedding": row if encoding == "base64" else floats(row)}
                 for i, row in enumerate(rows)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def floats(row_base64: str) -> list[float]:
    """A base64 row of little-endian float32 as floats."""
    values = array.array("f")
    values.frombytes(base64.b64decode(row_base64))
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
