"""Where nodes find and put files: the models folder (ComfyUI's layout), input/, output/ and temp/.

Every path a node touches goes through `safe_join`, so a file name from a workflow can never reach
outside its folder (`../../etc/passwd`, absolute paths and symlinks out are all refused).

The models folder is laid out as ComfyUI's (`models/checkpoints`, `models/loras`, `models/vae`,
`models/embeddings`), so `--models-dir` can point straight at an existing `ComfyUI/models`. The
Automatic1111 names (`Stable-diffusion`, `Lora`, `VAE`) are accepted too, as fallbacks.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MODEL_FOLDERS",
    "MODEL_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "UnsafePathError",
    "settings_dir",
    "models_root",
    "model_folders",
    "list_models",
    "find_model",
    "model_choices",
    "missing_model_message",
    "safe_join",
    "list_input_files",
    "input_choices",
    "find_input",
    "file_sha256",
    "save_path",
]

# Kind of model -> sub-folder names tried in order (ComfyUI's first, then Automatic1111's).
MODEL_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints", "Stable-diffusion"),
    "loras": ("loras", "Lora"),
    "vae": ("vae", "VAE"),
    "embeddings": ("embeddings",),
}
MODEL_EXTENSIONS: tuple[str, ...] = (".safetensors", ".sft", ".ckpt", ".pt", ".pt2", ".pth", ".bin")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

_DEFAULT_DIRS = {"models_dir": "models", "input_dir": "input", "output_dir": "output", "temp_dir": "temp"}


class UnsafePathError(ValueError):
    """A file name from a workflow points outside the folder it must stay in."""


def settings_dir(settings: dict[str, Any], key: str) -> Path:
    """The folder a setting names (`models_dir`, `input_dir`, `output_dir`, `temp_dir`), absolute."""
    value = settings.get(key)
    if not value:
        value = Path(settings.get("base_dir") or os.getcwd()) / _DEFAULT_DIRS[key]
    return Path(value).expanduser().resolve()


def models_root(settings: dict[str, Any]) -> Path:
    return settings_dir(settings, "models_dir")


def model_folders(settings: dict[str, Any], kind: str) -> list[Path]:
    """The existing folders that hold models of `kind`; the first is where new files go."""
    if kind not in MODEL_FOLDERS:
        raise KeyError(f"unknown model folder kind {kind!r}; known: {', '.join(MODEL_FOLDERS)}")
    root = models_root(settings)
    found = [root / sub for sub in MODEL_FOLDERS[kind] if (root / sub).is_dir()]
    return found or [root / MODEL_FOLDERS[kind][0]]


def safe_join(folder: str | os.PathLike[str], name: str) -> Path:
    """`folder / name`, refusing names that are absolute or resolve outside `folder`."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UnsafePathError(f"file name {name!r} is empty or not a string")
    base = Path(folder).resolve()
    if os.path.isabs(name) or Path(name).is_absolute() or name.startswith(("/", "\\")):
        raise UnsafePathError(f"file name {name!r} is absolute; give a name relative to {base}")
    target = (base / name).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(f"file name {name!r} points outside {base}; use a name inside that folder")
    return target


def _walk(folder: Path, extensions: Sequence[str]) -> list[str]:
    out: list[str] = []
    if not folder.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in filenames:
            if fn.startswith(".") or not fn.lower().endswith(tuple(extensions)):
                continue
            rel = Path(dirpath, fn).relative_to(folder).as_posix()
            out.append(rel)
    return out


def list_models(settings: dict[str, Any], kind: str, extensions: Sequence[str] = MODEL_EXTENSIONS) -> list[str]:
    """Model files of `kind`, as names relative to their folder (with `/` for sub-folders), sorted."""
    names: set[str] = set()
    for folder in model_folders(settings, kind):
        names.update(_walk(folder, extensions))
    return sorted(names, key=str.lower)


def find_model(settings: dict[str, Any], kind: str, name: str) -> Path | None:
    """The full path of model `name` of `kind`, or None when it is in none of the folders."""
    for folder in model_folders(settings, kind):
        try:
            path = safe_join(folder, name)
        except UnsafePathError:
            return None
        if path.is_file():
            return path
    return None


def missing_model_message(settings: dict[str, Any], kind: str, name: Any) -> str:
    """Why a model was not found and how to fix it: the folders searched and what they hold."""
    folders = model_folders(settings, kind)
    where = " or ".join(str(f) for f in folders)
    available = list_models(settings, kind)
    have = f"; available: {', '.join(available[:20])}" if available else f"; that folder has no {kind} files"
    try:
        safe_join(folders[0], name)
    except UnsafePathError as exc:
        return f"{exc}{have}"
    return (f"{kind} file {name!r} not found in {where}{have}. Put the file there, or start with "
            f"--models-dir pointing at a models folder laid out as ComfyUI's (models/{kind}/...)")


def model_choices(kind: str, extensions: Sequence[str] = MODEL_EXTENSIONS,
                  extra: Iterable[str] = ()) -> Callable[[Any], list[str]]:
    """A callable combo-choice list for `Input(choices=...)`: the files found in the folder now."""
    extra_names = list(extra)

    def choices(env: Any) -> list[str]:
        return list_models(env.settings, kind, extensions) + extra_names

    choices.__name__ = f"{kind}_choices"
    return choices


def list_input_files(settings: dict[str, Any], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Files in input/ (and its sub-folders) with the given extensions, sorted."""
    return sorted(_walk(settings_dir(settings, "input_dir"), extensions), key=str.lower)


def input_choices(extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Callable[[Any], list[str]]:
    def choices(env: Any) -> list[str]:
        return list_input_files(env.settings, extensions)

    return choices


def find_input(settings: dict[str, Any], name: str) -> Path:
    """The path of input file `name`; raises UnsafePathError or FileNotFoundError with the fix."""
    folder = settings_dir(settings, "input_dir")
    # ComfyUI allows an "[input]" / "[output]" suffix naming the folder; only input/ is reachable here.
    if name.endswith(" [input]"):
        name = name[: -len(" [input]")]
    path = safe_join(folder, name)
    if not path.is_file():
        raise FileNotFoundError(f"file {name!r} not found in {folder}; copy it there or upload it first")
    return path


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _expand_prefix(prefix: str, width: int, height: int) -> str:
    if "%" not in prefix:
        return prefix
    now = time.localtime()
    values = {
        "%width%": str(width), "%height%": str(height), "%year%": str(now.tm_year),
        "%month%": f"{now.tm_mon:02}", "%day%": f"{now.tm_mday:02}", "%hour%": f"{now.tm_hour:02}",
        "%minute%": f"{now.tm_min:02}", "%second%": f"{now.tm_sec:02}",
    }
    for key, value in values.items():
        prefix = prefix.replace(key, value)
    return prefix


def save_path(folder: str | os.PathLike[str], filename_prefix: str, width: int = 0,
              height: int = 0) -> tuple[Path, str, int, str]:
    """Where to save the next files for `filename_prefix`, following ComfyUI's naming.

    Returns (full folder, file name stem, first free counter, subfolder). The prefix may name
    sub-folders (`portraits/ComfyUI`) and use %width%, %height%, %year%, ... The counter is one more
    than the largest `{stem}_NNNNN_` already in the folder, so files are never overwritten.
    `%batch_num%` is left for the caller to substitute per image.
    """
    base = Path(folder).resolve()
    prefix = _expand_prefix(filename_prefix, width, height)
    norm = os.path.normpath(prefix)
    subfolder = os.path.dirname(norm)
    stem = os.path.basename(norm)
    if not stem or stem in (".", ".."):
        raise UnsafePathError(f"filename_prefix {filename_prefix!r} has no file name part; end it with a name")
    full = safe_join(base, subfolder) if subfolder else base
    full.mkdir(parents=True, exist_ok=True)
    # "{stem}_{digits}_..." -> digits; %batch_num% matches any number so batches never overwrite.
    pattern = re.escape(os.path.normcase(stem)).replace(re.escape("%batch_num%"), r"\d+")
    name_re = re.compile(rf"^{pattern}_(\d+)_")
    counter = 0
    for existing in os.listdir(full):
        match = name_re.match(os.path.normcase(existing))
        if match:
            counter = max(counter, int(match.group(1)))
    rel_sub = Path(subfolder).as_posix() if subfolder else ""
    return full, stem, counter + 1, rel_sub
