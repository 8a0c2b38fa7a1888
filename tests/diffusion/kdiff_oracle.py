"""k-diffusion's sampling.py as a test oracle, imported without its package __init__ (sdxl.md section 4, pitfall 7).

`k_diffusion/__init__.py` pulls in skimage, clean-fid, clip and wandb; sampling.py itself needs only
scipy, torchsde, torchdiffeq, tqdm and `utils.append_dims`. We register a bare package module pointing at
the installed folder plus a small `k_diffusion.utils` stand-in, then import `k_diffusion.sampling`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

__all__ = ["load_sampling"]


def _append_dims(x, target_dims):
    """Appends singleton dimensions to x until it has target_dims dimensions."""
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * missing]


def load_sampling():
    """The k_diffusion.sampling module (imported once, without k_diffusion's heavy dependencies)."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed; install it with: pip install --no-deps k-diffusion==0.1.1.post1")
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    sys.modules.setdefault("k_diffusion", package)
    sys.modules.setdefault("k_diffusion.utils", utils)
    return importlib.import_module("k_diffusion.sampling")
