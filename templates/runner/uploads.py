"""What ``POST /predict`` accepts, turned into the runner's inputs (before the runtime decodes them).

- ``application/json``: ``{input: value}`` as always; for a bundle with image preprocessing the
  image input may be a base64 string (or ``data:image/...;base64,`` URL) or a list of them, for one
  with text preprocessing ``{"text": str | [str, ...]}``;
- ``multipart/form-data`` (image bundles): the image as a file field named like the image input,
  or as the only file (several files under that name: a batch); text bundles: a ``text`` field
  (``application/x-www-form-urlencoded`` too);
- ``image/*``: the request body is the encoded image.

Strings are never read as file paths here: the server passes bytes to the runtime, with
``paths=False`` besides. Every problem is an :class:`UploadError` (HTTP 400 or 415, one line).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from runner import jsontensors
from runner.preprocess import PreprocessError, decode_base64

MAX_FILES = 64  # images in one multipart request (the body limit applies as well)
MAX_FIELDS = 16


class UploadError(Exception):
    """A /predict body that cannot be read: ``status`` (400/415), ``error`` word and a one-line message."""

    def __init__(self, status: int, error: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.details = status, error, message, details


def accepted(kind: str | None) -> str:
    """The content types /predict takes for a bundle with this preprocessing (for 415 messages)."""
    if kind == "image":
        return "application/json, multipart/form-data or image/*"
    if kind == "text":
        return "application/json, multipart/form-data or application/x-www-form-urlencoded"
    return "application/json"


async def predict_inputs(content_type: str, headers: Any, body: bytes, kind: str | None, key: str,
                         dtypes: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """The inputs in a /predict body of ``content_type`` (lower case, no parameters). ``dtypes``
    (the model's, by input name) lets JSON numbers go straight into NumPy arrays."""
    if content_type == "application/json":
        return _json_inputs(body, kind, key, dtypes or {})
    if kind == "image" and content_type.startswith("image/"):
        if not body:
            raise UploadError(400, "invalid_input", f"{key}: the image is empty (0 bytes)")
        return {key: body}
    if kind is not None and content_type == "multipart/form-data":
        return await _form_inputs(headers, body, kind, key)
    if kind == "text" and content_type == "application/x-www-form-urlencoded":
        return _urlencoded_inputs(body, key)
    raise UploadError(415, "unsupported_media_type", f"send inputs as {accepted(kind)}")


def _json_inputs(body: bytes, kind: str | None, key: str, dtypes: dict[str, str]) -> dict[str, Any]:
    data = jsontensors.predict_request(body, dtypes)
    if data is None:
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise UploadError(400, "invalid_json", "request body is not valid JSON",
                              {"position": getattr(exc, "pos", None)}) from None  # fmt: skip
    if not isinstance(data, dict):
        raise UploadError(400, "invalid_input", "request body must be a JSON object mapping input names to values")
    # GPUX clients sometimes wrap inputs as {"inputs": {...}}; accept both when unambiguous.
    if set(data) == {"inputs"} and isinstance(data["inputs"], dict) and key != "inputs":
        data = data["inputs"]
    if kind == "image" and key in data:
        value = data[key]
        try:
            if isinstance(value, str):
                data[key] = decode_base64(value, key)
            elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                data[key] = [decode_base64(v, f"{key}[{i}]") for i, v in enumerate(value)]
        except PreprocessError as exc:
            raise UploadError(400, "invalid_input", str(exc)) from None
    return data


async def _form_inputs(headers: Any, body: bytes, kind: str, key: str) -> dict[str, Any]:
    from starlette import formparsers
    from starlette.datastructures import UploadFile

    if formparsers.multipart is None:  # python-multipart is in the requirements of image/text bundles
        raise UploadError(415, "unsupported_media_type", "this server cannot read multipart uploads "
                          "(python-multipart is not installed): send application/json")  # fmt: skip

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body
        yield b""

    parser = formparsers.MultiPartParser(headers, stream(), max_files=MAX_FILES, max_fields=MAX_FIELDS)
    try:
        form = await parser.parse()
    except formparsers.MultiPartException as exc:
        raise UploadError(400, "invalid_input", f"unreadable multipart body ({exc})") from None
    try:
        files: dict[str, list[bytes]] = {}
        fields: dict[str, list[str]] = {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.setdefault(name, []).append(await value.read())
            else:
                fields.setdefault(name, []).append(value)
    finally:
        await form.close()
    return _form_fields(files, fields, kind, key)


def _urlencoded_inputs(body: bytes, key: str) -> dict[str, Any]:
    """A plain HTML form (``text=...``), for text bundles."""
    from urllib.parse import parse_qsl

    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body),
                          max_num_fields=MAX_FIELDS)  # fmt: skip
    except (UnicodeDecodeError, ValueError):
        raise UploadError(400, "invalid_input", "unreadable form body (UTF-8 name=value pairs expected)") from None
    fields: dict[str, list[str]] = {}
    for name, value in pairs:
        fields.setdefault(name, []).append(value)
    return _form_fields({}, fields, "text", key)


def _form_fields(files: dict[str, list[bytes]], fields: dict[str, list[str]], kind: str, key: str) -> dict[str, Any]:
    if kind == "text":
        if files or set(fields) - {key}:
            extra = sorted([*files, *fields])
            raise UploadError(400, "invalid_input", f"send the text as a form field named '{key}' (got: "
                              f"{', '.join(extra)})")  # fmt: skip
        texts = fields.get(key)
        if not texts:
            raise UploadError(400, "invalid_input", f"no form field '{key}'")
        return {key: texts[0] if len(texts) == 1 else texts}
    if fields:
        raise UploadError(400, "invalid_input", f"unexpected form field '{sorted(fields)[0]}': send the image as a "
                          f"file field named '{key}'")  # fmt: skip
    if len(files) != 1:  # one file field: named like the image input, or the only one
        named = ", ".join(sorted(files)) or "none"
        raise UploadError(400, "invalid_input", f"send the image as one file field named '{key}' (file fields: "
                          f"{named})")  # fmt: skip
    chosen = next(iter(files.values()))
    return {key: chosen[0] if len(chosen) == 1 else chosen}
