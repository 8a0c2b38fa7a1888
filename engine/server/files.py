"""File routes: `/view`, `/upload/image`, `/upload/mask`, confined to the input/output/temp folders.

Every name from a request goes through `resolve`, which refuses NUL bytes, backslashes, absolute
paths, `..`, percent-encoded separators and anything (symlinks included) that resolves outside its
folder. Uploads must decode as images within a pixel limit.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote
from typing import Any

from aiohttp import BodyPartReader, web
from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from engine.server.jsonio import ApiError, json_response

__all__ = ["Folders", "resolve", "check_name", "view", "upload_image", "upload_mask", "store_upload",
           "DEFAULT_MAX_PIXELS"]

DEFAULT_MAX_PIXELS = 64_000_000
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|2e|00)", re.IGNORECASE)
_ANNOTATION = re.compile(r"^(.*) \[(input|output|temp)\]$")


@dataclass(frozen=True)
class Folders:
    """The folders files may be read from and written to, by ComfyUI's `type` name."""

    input: Path
    output: Path
    temp: Path

    def get(self, kind: str) -> Path:
        """The folder for `type=kind`; 400 for anything but input, output and temp."""
        if kind not in ("input", "output", "temp"):
            raise ApiError(400, "invalid_type", f"type {kind!r} is not a file folder; use input, output or temp")
        return Path(getattr(self, kind))


def check_name(value: str, what: str, *, allow_slash: bool) -> list[str]:
    """The path components of a requested name; 400 for anything that could leave its folder."""
    if "\x00" in value:
        raise ApiError(400, "invalid_path", f"{what} contains a NUL byte; send a plain file name")
    if "\\" in value:
        raise ApiError(400, "invalid_path", f"{what} {value!r} contains a backslash; use '/' between folders")
    if _ENCODED_SEPARATOR.search(value):
        raise ApiError(400, "invalid_path", f"{what} {value!r} contains a percent-encoded separator or dot; "
                       f"send the name decoded")
    if value.startswith("/") or re.match(r"^[A-Za-z]:", value):
        raise ApiError(400, "invalid_path", f"{what} {value!r} is absolute; give a name relative to the folder")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ApiError(400, "invalid_path", f"{what} {value!r} contains '..'; files outside the folder cannot "
                       f"be reached")
    if not allow_slash and len(parts) > 1:
        raise ApiError(400, "invalid_path", f"{what} {value!r} contains '/'; put folders in 'subfolder'")
    return parts


def resolve(base: Path, subfolder: str, filename: str) -> Path:
    """`base/subfolder/filename`, refused (400/403) unless it stays inside `base` after resolving links."""
    parts = check_name(subfolder, "subfolder", allow_slash=True) + check_name(filename, "filename",
                                                                              allow_slash=True)
    root = base.resolve()
    target = root.joinpath(*parts).resolve()
    if target != root and root not in target.parents:
        raise ApiError(403, "forbidden_path", f"{'/'.join(parts)!r} resolves outside the {base.name} folder "
                       f"(through a symbolic link); only files inside it are served")
    return target


def _query_location(query: Any, folders: Folders) -> tuple[Path, str, str, str]:
    filename = query.get("filename", "")
    if not filename:
        raise ApiError(400, "missing_filename", "GET /view needs ?filename=<name> (and type, subfolder)")
    kind = query.get("type", "output") or "output"
    annotated = _ANNOTATION.match(filename)
    if annotated:  # ComfyUI's "name.png [input]" form
        filename, kind = annotated.group(1), annotated.group(2)
    return folders.get(kind), query.get("subfolder", ""), filename, kind


async def view(request: web.Request, folders: Folders) -> web.StreamResponse:
    """`GET /view?filename&type&subfolder&preview=webp;90&channel=rgb|a|rgba`."""
    base, subfolder, filename, kind = _query_location(request.query, folders)
    path = resolve(base, subfolder, filename)
    if not path.is_file():
        raise ApiError(404, "not_found", f"no file {filename!r} in {kind}/{subfolder}".rstrip("/") +
                       "; check filename, subfolder and type")
    channel = request.query.get("channel", "rgba") or "rgba"
    if channel not in ("rgb", "a", "rgba"):
        raise ApiError(400, "invalid_channel", f"channel {channel!r} is not one of rgb, a, rgba")
    preview = request.query.get("preview")
    headers = {"Content-Disposition": f'filename="{path.name}"'}
    if not preview and channel == "rgba":
        return web.FileResponse(path, headers=headers)
    try:
        with Image.open(path) as img:
            img.load()
            out, fmt, options = _transform(img, channel, preview)
    except (UnidentifiedImageError, OSError) as exc:
        raise ApiError(415, "not_an_image", f"{filename!r} is not an image Pillow can read ({exc}); ask without "
                       f"preview/channel to get the raw file") from None
    buf = io.BytesIO()
    out.save(buf, format=fmt, **options)
    return web.Response(body=buf.getvalue(), content_type=f"image/{fmt.lower()}", headers=headers)


def _transform(img: Image.Image, channel: str, preview: str | None) -> tuple[Image.Image, str, dict[str, Any]]:
    if channel == "rgb":
        out = img.convert("RGB")
    elif channel == "a":
        alpha = img.getchannel("A") if "A" in img.getbands() else Image.new("L", img.size, 255)
        out = Image.new("RGBA", img.size)
        out.putalpha(alpha)
    else:
        out = img
    if not preview:
        return out, "PNG", {}
    fmt, _, quality_text = preview.partition(";")
    fmt = fmt.lower()
    if fmt not in ("webp", "jpeg") or "a" in channel:
        fmt = "webp"
    try:
        quality = max(1, min(100, int(quality_text))) if quality_text else 90
    except ValueError:
        raise ApiError(400, "invalid_preview", f"preview {preview!r}: quality must be a number, e.g. webp;90") from None
    if fmt == "jpeg":
        out = out.convert("RGB")
    return out, fmt.upper(), {"quality": quality}


# ---- uploads ------------------------------------------------------------------------------------


def _decode_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open and fully decode uploaded bytes; 400 unless it is an image, 413 if it has too many pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                w, h = probe.size
                if w * h > max_pixels:
                    raise ApiError(413, "image_too_large", f"{name!r} is {w}x{h} = {w * h:,} pixels, over the "
                                   f"limit of {max_pixels:,}; resize it before uploading")
                probe.verify()
            img = Image.open(io.BytesIO(data))
            img.load()
            return img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ApiError(413, "image_too_large", f"{name!r} is refused as a decompression bomb: {exc}") from None
    except ApiError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ApiError(400, "not_an_image", f"{name!r} is not a readable image ({exc}); upload a PNG, JPEG or "
                       f"WebP file") from None


def _same_content(path: Path, data: bytes) -> bool:
    try:
        if path.stat().st_size != len(data):
            return False
        return hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
    except OSError:
        return False


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def store_upload(base: Path, subfolder: str, filename: str, data: bytes, overwrite: bool) -> str:
    """Write an upload; the same content under a taken name reuses it, other collisions get ' (n)'."""
    target = resolve(base, subfolder, filename)
    stem, suffix = os.path.splitext(target.name)
    candidate, n = target, 1
    while not overwrite and candidate.exists():
        if _same_content(candidate, data):
            return candidate.name
        candidate = resolve(base, subfolder, f"{stem} ({n}){suffix}")
        n += 1
    _write_atomic(candidate, data)
    return candidate.name


async def _read_form(request: web.Request, limit: int) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "invalid_upload", f"{request.path} expects multipart/form-data with an 'image' file, "
                       f"got {request.content_type or 'no content type'}")
    reader = await request.multipart()
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    total = 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or not part.name:
            continue
        data = bytearray()
        while chunk := await part.read_chunk(1 << 16):
            data.extend(chunk)
            total += len(chunk)
            if total > limit:
                raise ApiError(413, "upload_too_large", f"the upload is over the limit of {limit >> 20} MB "
                               f"(at field {part.name!r}); raise max_upload_mb to allow it")
        if part.filename is not None:
            files[part.name] = (part.filename, bytes(data))
        else:
            fields[part.name] = data.decode("utf-8", "replace")
    return fields, files


def _upload_target(fields: dict[str, str], files: dict[str, tuple[str, bytes]], folders: Folders
                   ) -> tuple[str, bytes, Path, str, str, bool]:
    if "image" not in files:
        raise ApiError(400, "missing_image", "the form needs a file field named 'image'")
    filename, data = files["image"]
    # Some clients percent-encode the name in Content-Disposition; the folder part is dropped either way.
    filename = os.path.basename(unquote(filename).replace("\\", "/"))
    if not filename:
        raise ApiError(400, "invalid_path", "the uploaded file has no name; send a file name with it")
    kind = fields.get("type", "input") or "input"
    subfolder = fields.get("subfolder", "")
    overwrite = fields.get("overwrite", "").lower() in ("true", "1", "yes")
    return filename, data, folders.get(kind), kind, subfolder, overwrite


async def upload_image(request: web.Request, folders: Folders, max_pixels: int, max_bytes: int) -> web.Response:
    """`POST /upload/image`: multipart `image`, `overwrite`, `type`, `subfolder` -> `{name, subfolder, type}`."""
    fields, files = await _read_form(request, max_bytes)
    filename, data, base, kind, subfolder, overwrite = _upload_target(fields, files, folders)
    resolve(base, subfolder, filename)  # refuse a bad name before decoding anything
    _decode_image(data, filename, max_pixels).close()
    name = store_upload(base, subfolder, filename, data, overwrite)
    return json_response({"name": name, "subfolder": subfolder, "type": kind})


async def upload_mask(request: web.Request, folders: Folders, max_pixels: int, max_bytes: int) -> web.Response:
    """`POST /upload/mask`: the mask's alpha written into a copy of `original_ref`, saved as the upload."""
    fields, files = await _read_form(request, max_bytes)
    filename, data, base, kind, subfolder, overwrite = _upload_target(fields, files, folders)
    resolve(base, subfolder, filename)
    try:
        ref = json.loads(fields.get("original_ref", ""))
        if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
            raise ValueError("not an object with a filename")
    except ValueError as exc:
        raise ApiError(400, "invalid_original_ref", f"original_ref must be JSON {{filename, subfolder, type}} "
                       f"naming the image the mask belongs to ({exc})") from None
    ref_kind = str(ref.get("type") or "output")
    original_path = resolve(folders.get(ref_kind), str(ref.get("subfolder") or ""), ref["filename"])
    if not original_path.is_file():
        raise ApiError(404, "not_found", f"original_ref {ref['filename']!r} is not in {ref_kind}; upload it first")
    mask = _decode_image(data, filename, max_pixels)
    original = _decode_image(original_path.read_bytes(), ref["filename"], max_pixels)
    if mask.size != original.size:
        raise ApiError(400, "mask_size_mismatch", f"the mask is {mask.size[0]}x{mask.size[1]} but the original "
                       f"{ref['filename']!r} is {original.size[0]}x{original.size[1]}; send a mask of the same size")
    alpha = mask.convert("RGBA").getchannel("A")
    out = original.convert("RGBA")
    out.putalpha(alpha)
    buf = io.BytesIO()
    out.save(buf, format="PNG", pnginfo=_png_text(original))
    name = store_upload(base, subfolder, filename, buf.getvalue(), overwrite)
    return json_response({"name": name, "subfolder": subfolder, "type": kind})


def _png_text(img: Image.Image) -> PngInfo:
    """Keep the original's text chunks (embedded workflows) in the masked copy."""
    info = PngInfo()
    for key, value in getattr(img, "text", {}).items():
        info.add_text(key, value)
    return info

