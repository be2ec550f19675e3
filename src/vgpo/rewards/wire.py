"""The reward server's wire format: images as PNG or safetensors, prompts and metadata as JSON, never pickle.

A ``POST /score`` body is one of
- ``application/json``: ``{"images_png": [base64 PNG, ...], "prompts": [...], "metadata": [{...}, ...]}``;
- ``multipart/form-data``: a part named ``request`` holding the JSON above without ``images_png``, and one
  part per image (``image/png``), in order;
- ``application/x-safetensors`` (alias ``application/safetensors``): a safetensors file whose tensor ``images``
  is [N, 3, H, W] (float in [0, 1], or uint8 in [0, 255]) and whose header metadata holds ``prompts`` and
  ``metadata`` as JSON strings.
The answer is ``{"scores": [N floats], "reward": name}``. Both sides of the wire use these functions, so a
client and the server cannot disagree on the format. PNG carries 8 bits per channel (every pixel-reading
reward quantises to that anyway); safetensors float32 carries the images exactly.

The server decodes in two steps: :func:`parse_request` checks the fields and reads every image's size from its
header (the PNG IHDR chunk, the safetensors JSON header) without decoding a pixel, so a request over the pixel
cap is refused (413) before it costs memory; :meth:`ParsedRequest.decode` then decodes the images.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vgpo.scoring.images import images_to_uint8, uint8_to_images

JSON_TYPE = "application/json"
SAFETENSORS_TYPES = ("application/x-safetensors", "application/safetensors")
MULTIPART_TYPE = "multipart/form-data"
PICKLE_HINTS = ("pickle", "python-pickle", "x-python-serialize")
DEFAULT_MAX_REQUEST_PIXELS = 1 << 24
"""Pixels (height x width, summed over images) a request may hold: 16.8M, 64 images of 512 x 512, about 200 MB
as float32 RGB. A PNG of a flat colour compresses a thousandfold (a 5000 x 5000 one is 84 KB), so the body size
alone does not bound the memory its images take."""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
"""Float dtypes a safetensors ``images`` tensor may have (besides U8), by their safetensors names."""


class PayloadError(ValueError):
    """A malformed request body; ``status`` is the HTTP status the server answers with, the message names why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ScoreRequest:
    """A decoded request: images [N, 3, H, W] float32 in [0, 1], N prompts, N metadata dicts."""

    images: torch.Tensor
    prompts: list[str]
    metadata: list[dict[str, Any]]


def looks_like_pickle(body: bytes) -> bool:
    """Whether ``body`` is a pickle (PROTO opcode 0x80 + protocol 2-5, ending in STOP '.') or a torch.save
    zip archive (which holds a pickle)."""
    if len(body) >= 3 and body[0] == 0x80 and 2 <= body[1] <= 5 and body.rstrip()[-1:] == b".":
        return True
    return body[:4] == b"PK\x03\x04" and b".pkl" in body[:4096]


def _pickle_error() -> PayloadError:
    return PayloadError(
        "pickle payloads are refused (unpickling runs arbitrary code); send images as PNG (JSON or multipart) "
        "or safetensors, with prompts and metadata as JSON",
        status=415,
    )


# ---------------------------------------------------------------------------------------------------------
# Encoding (clients).


def png_bytes(images: torch.Tensor) -> list[bytes]:
    """PNG files of images [N, 3, H, W] in [0, 1] (8 bits per channel, rounded like ``images_to_uint8``)."""
    encoded = []
    for array in images_to_uint8(images):
        buffer = io.BytesIO()
        Image.fromarray(array, mode="RGB").save(buffer, format="PNG", compress_level=1)
        encoded.append(buffer.getvalue())
    return encoded


def encode_json(images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> tuple[bytes, str]:
    """(body, content type) of a JSON request with base64 PNG images."""
    body = {
        "images_png": [base64.b64encode(png).decode("ascii") for png in png_bytes(images)],
        "prompts": list(prompts),
        "metadata": list(metadata),
    }
    return json.dumps(body).encode("utf-8"), JSON_TYPE


def encode_multipart(images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request: a JSON part ``request`` and one PNG part per image."""
    boundary = f"vgpo-{uuid.uuid4().hex}"
    parts = [
        (
            f'Content-Disposition: form-data; name="request"\r\nContent-Type: {JSON_TYPE}\r\n\r\n',
            json.dumps({"prompts": list(prompts), "metadata": list(metadata)}).encode("utf-8"),
        )
    ]
    for index, png in enumerate(png_bytes(images)):
        header = (
            f'Content-Disposition: form-data; name="image"; filename="{index}.png"\r\nContent-Type: image/png\r\n\r\n'
        )
        parts.append((header, png))
    chunks = []
    for header, payload in parts:
        chunks += [f"--{boundary}\r\n".encode("ascii"), header.encode("ascii"), payload, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(chunks), f"{MULTIPART_TYPE}; boundary={boundary}"


def encode_safetensors(images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> tuple[bytes, str]:
    """(body, content type) of a safetensors request: images [N, 3, H, W] as float32, exactly."""
    from safetensors.torch import save

    tensor = images.detach().to("cpu", torch.float32).contiguous()
    header = {"prompts": json.dumps(list(prompts)), "metadata": json.dumps(list(metadata))}
    return save({"images": tensor}, metadata=header), SAFETENSORS_TYPES[0]


ENCODERS = {"png": encode_json, "multipart": encode_multipart, "safetensors": encode_safetensors}


# ---------------------------------------------------------------------------------------------------------
# Decoding (the server).


@dataclass
class ParsedRequest:
    """A checked request whose images are not decoded yet: ``count`` images of ``height`` x ``width`` (read from
    the headers), their prompts and metadata; :meth:`decode` gives the :class:`ScoreRequest`."""

    count: int
    height: int
    width: int
    prompts: list[str]
    metadata: list[dict[str, Any]]
    _decode_images: Callable[[], torch.Tensor]

    @property
    def pixels(self) -> int:
        """height x width summed over the images (the unit of every pixel cap)."""
        return self.count * self.height * self.width

    def decode(self) -> ScoreRequest:
        """Decode the images: [N, 3, H, W] float32 in [0, 1]; raises :class:`PayloadError` on a bad image."""
        images = self._decode_images()
        if tuple(images.shape) != (self.count, 3, self.height, self.width):  # a header that lied about its size
            raise PayloadError(
                f"bad image: the images decode to shape {tuple(images.shape)}, but their headers say "
                f"{[self.count, 3, self.height, self.width]}"
            )
        return ScoreRequest(images=images, prompts=self.prompts, metadata=self.metadata)


def decode_request(body: bytes, content_type: str, max_pixels: int = DEFAULT_MAX_REQUEST_PIXELS) -> ScoreRequest:
    """Parse and decode a ``POST /score`` body (:func:`parse_request`, then :meth:`ParsedRequest.decode`)."""
    return parse_request(body, content_type, max_pixels).decode()


def parse_request(body: bytes, content_type: str, max_pixels: int = DEFAULT_MAX_REQUEST_PIXELS) -> ParsedRequest:
    """Check a ``POST /score`` body without decoding its images; raises :class:`PayloadError` naming the problem
    (pickle 415, more than ``max_pixels`` pixels 413, bad JSON, bad image header, wrong field types 400, a
    count that does not match 422)."""
    try:
        return _parse_request(body, content_type, max_pixels)
    except RecursionError:
        raise PayloadError("bad JSON: the request is nested too deeply to parse; send flat JSON") from None


def _parse_request(body: bytes, content_type: str, max_pixels: int) -> ParsedRequest:
    media_type = content_type.split(";")[0].strip().lower()
    if any(hint in media_type for hint in PICKLE_HINTS):
        raise _pickle_error()
    if media_type in SAFETENSORS_TYPES:
        return _parse_safetensors(body, max_pixels)
    if looks_like_pickle(body):
        raise _pickle_error()
    if media_type == MULTIPART_TYPE:
        return _parse_multipart(body, content_type, max_pixels)
    if media_type in (JSON_TYPE, "", "text/json"):
        fields = _parse_json(body, "request body")
        if not isinstance(fields, dict):
            raise PayloadError(
                f"the JSON body must be an object with images_png, prompts and metadata, got {type(fields).__name__}"
            )
        pngs = fields.get("images_png")
        if not isinstance(pngs, list):
            raise PayloadError("the JSON body needs 'images_png': a list of base64-encoded PNG images")
        raw = []
        for index, text in enumerate(pngs):
            if not isinstance(text, str):
                raise PayloadError(f"bad image: images_png[{index}] must be a base64 string, got {type(text).__name__}")
            try:
                raw.append(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError) as error:
                raise PayloadError(f"bad image: images_png[{index}] is not valid base64 ({error})") from None
        return _parse_pngs(raw, fields, max_pixels)
    raise PayloadError(
        f"unsupported Content-Type {content_type!r}; use {JSON_TYPE} (base64 PNG), {MULTIPART_TYPE} (PNG parts) "
        f"or {SAFETENSORS_TYPES[0]}",
        status=415,
    )


def _parse_json(raw: bytes | str, what: str) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PayloadError(f"bad JSON: the {what} is not valid JSON ({error})") from None
    except RecursionError:
        raise PayloadError(f"bad JSON: the {what} is nested too deeply to parse; send flat JSON") from None


def _too_many_pixels(pixels: int, max_pixels: int, detail: str) -> PayloadError:
    return PayloadError(
        f"oversized request: its images hold {pixels} pixels ({detail}), more than this server's limit of "
        f"{max_pixels} pixels per request; send fewer or smaller images (the remote reward splits its batches by "
        "the limit /health reports) or restart the server with a larger --max-request-pixels",
        status=413,
    )


def png_size(data: bytes, index: int) -> tuple[int, int]:
    """(width, height) of a PNG file from its IHDR chunk, which the PNG specification places first (signature,
    then length 13, b"IHDR", width and height as big-endian uint32); no pixel is decoded."""
    if looks_like_pickle(data):
        raise _pickle_error()
    if not data.startswith(PNG_SIGNATURE):
        raise PayloadError(f"bad image: image {index} is not a PNG file (it lacks the PNG signature)")
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise PayloadError(f"bad image: image {index} is a truncated PNG (no IHDR chunk after the signature)")
    width, height = struct.unpack(">II", data[16:24])
    if width == 0 or height == 0:
        raise PayloadError(f"bad image: image {index} is {width} x {height}; an image needs at least one pixel")
    return width, height


def _parse_pngs(raw: list[bytes], fields: dict[str, Any], max_pixels: int) -> ParsedRequest:
    """The request of PNG files ``raw``: sizes from the headers, checked against the cap before any decoding."""
    if not raw:
        raise PayloadError("the request holds no images; send at least one")
    sizes = [png_size(data, index) for index, data in enumerate(raw)]
    pixels = sum(width * height for width, height in sizes)
    if pixels > max_pixels:
        largest = max(range(len(sizes)), key=lambda i: sizes[i][0] * sizes[i][1])
        detail = f"{len(raw)} images, image {largest} is {sizes[largest][0]} x {sizes[largest][1]}"
        raise _too_many_pixels(pixels, max_pixels, detail)
    if len(set(sizes)) > 1:
        raise PayloadError(f"bad image: the images of one request must share a size, got {sorted(set(sizes))}")
    width, height = sizes[0]
    prompts, metadata = _check_fields(fields, len(raw))
    return ParsedRequest(len(raw), height, width, prompts, metadata, lambda: _decode_pngs(raw))


def _decode_pngs(raw: list[bytes]) -> torch.Tensor:
    """Images [N, 3, H, W] float32 in [0, 1] from PNG files whose headers were checked."""
    arrays = []
    for index, data in enumerate(raw):
        try:
            with Image.open(io.BytesIO(data)) as image:
                arrays.append(np.asarray(image.convert("RGB")))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise PayloadError(f"bad image: image {index} is not a decodable PNG ({error})") from None
    if len({array.shape for array in arrays}) > 1:
        raise PayloadError("bad image: the images of one request decode to different sizes")
    return uint8_to_images(arrays)


def _parse_multipart(body: bytes, content_type: str, max_pixels: int) -> ParsedRequest:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise PayloadError("bad multipart body: no parts found (check the boundary in the Content-Type)")
    fields: Any = None
    raw: list[bytes] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        decoded = part.get_payload(decode=True)
        payload = decoded if isinstance(decoded, bytes) else b""
        if name == "request":
            fields = _parse_json(payload, "multipart part 'request'")
        elif name == "image":
            raw.append(payload)
        else:
            raise PayloadError(
                f"unknown multipart part {name!r}; send one part 'request' (JSON) and parts 'image' (PNG)"
            )
    if not isinstance(fields, dict):
        raise PayloadError("the multipart body needs a part 'request': a JSON object with prompts and metadata")
    return _parse_pngs(raw, fields, max_pixels)


def _parse_safetensors(body: bytes, max_pixels: int) -> ParsedRequest:
    """Check a safetensors body from its JSON header (layout: 8-byte little-endian header length, the header,
    then the tensor data; github.com/huggingface/safetensors README, "Format") before loading any tensor."""
    if len(body) < 8:
        raise PayloadError(f"bad safetensors body: {len(body)} bytes, shorter than the 8-byte header length")
    header_size = int.from_bytes(body[:8], "little")
    if header_size > len(body) - 8:
        if looks_like_pickle(body):
            raise _pickle_error()
        raise PayloadError(
            f"bad safetensors body: its header length is {header_size} bytes but the body holds {len(body) - 8} more"
        )
    header = _parse_json(body[8 : 8 + header_size], "safetensors header")
    if not isinstance(header, dict):
        raise PayloadError(f"bad safetensors body: the header must be a JSON object, got {type(header).__name__}")
    text_fields = header.pop("__metadata__", None) or {}
    if not isinstance(text_fields, dict) or not all(isinstance(v, str) for v in text_fields.values()):
        raise PayloadError(
            "bad safetensors metadata: __metadata__ must map names to JSON strings "
            '({"prompts": "[...]", "metadata": "[...]"})'
        )
    entry = header.get("images")
    if not isinstance(entry, dict):
        raise PayloadError(f"the safetensors body needs a tensor 'images' [N, 3, H, W]; it holds {sorted(header)}")
    if len(header) > 1:
        raise PayloadError(
            f"the safetensors body must hold only the tensor 'images'; it also holds {sorted(set(header) - {'images'})}"
        )
    shape, dtype = entry.get("shape"), entry.get("dtype")
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or shape[1] != 3
    ):
        raise PayloadError(f"bad image: 'images' must be [N, 3, H, W], got shape {shape}")
    count, _, height, width = shape
    if 0 in shape:
        raise PayloadError(f"bad image: 'images' has shape {shape}; send at least one image of at least one pixel")
    if count * height * width > max_pixels:
        raise _too_many_pixels(count * height * width, max_pixels, f"{count} images of {width} x {height}")
    if dtype != "U8" and dtype not in SAFETENSORS_DTYPES:
        raise PayloadError(f"bad image: 'images' must be float or uint8 (U8), got dtype {dtype!r}")
    fields = {
        key: _parse_json(text_fields.get(key, "null"), f"safetensors metadata entry {key!r}")
        for key in ("prompts", "metadata")
    }
    prompts, metadata = _check_fields(fields, count)
    return ParsedRequest(count, height, width, prompts, metadata, lambda: _decode_safetensors(body))


def _decode_safetensors(body: bytes) -> torch.Tensor:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        images = load(body)["images"]
    except (SafetensorError, ValueError) as error:
        raise PayloadError(f"bad safetensors body: {error}") from None
    if images.dtype == torch.uint8:
        return images.float().div(255.0)
    images = images.float()
    if not bool(torch.isfinite(images).all()):
        raise PayloadError("bad image: 'images' holds NaN or inf values")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise PayloadError(
            f"bad image: float images must lie in [0, 1], but 'images' spans [{low:g}, {high:g}]; "
            "scale them to [0, 1] (or send uint8 values 0-255)"
        )
    return images


def _check_fields(fields: dict[str, Any], count: int) -> tuple[list[str], list[dict[str, Any]]]:
    """The prompts and metadata of a request of ``count`` images, type-checked."""
    prompts = fields.get("prompts")
    metadata = fields.get("metadata")
    if metadata is None:
        metadata = [{} for _ in range(count)]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise PayloadError("'prompts' must be a JSON list of strings, one per image")
    if not isinstance(metadata, list) or not all(isinstance(m, dict) for m in metadata):
        raise PayloadError("'metadata' must be a JSON list of objects, one per image (or left out)")
    if len(prompts) != count or len(metadata) != count:
        raise PayloadError(
            f"image count != prompt count: {count} images but {len(prompts)} prompts and {len(metadata)} metadata "
            "entries; send one prompt and one metadata object per image",
            status=422,
        )
    return prompts, metadata
