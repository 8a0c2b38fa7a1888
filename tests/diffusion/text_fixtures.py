"""Shared helpers for the text-encoder tests: random tiny CLIP models and their transformers twins."""

from nodes.diffusion.clip import CLIPTextConfig, CLIPTextModel, OpenCLIPTextModel
from tests.diffusion.conftest import randomize_  # every parameter random: norms near 1, biases near 0

__all__ = [
    "G_PREFIX",
    "L_PREFIX",
    "PARITY_BIGG_CONFIG",
    "PARITY_L_CONFIG",
    "hf_bigg",
    "hf_clip_l",
    "hf_config",
    "random_bigg",
    "random_clip_l",
    "strip_text_model",
]

L_PREFIX = "conditioner.embedders.0.transformer.text_model."
G_PREFIX = "conditioner.embedders.1.model."

# several heads so that head splitting is exercised; the open_clip converter in diffusers needs
# projection_dim == width (it splits in_proj by the projection's size)
PARITY_L_CONFIG = CLIPTextConfig(width=32, layers=3, heads=4, mlp_width=64, activation="quick_gelu")
PARITY_BIGG_CONFIG = CLIPTextConfig(width=48, layers=4, heads=3, mlp_width=96, activation="gelu", projection_dim=48)


def random_clip_l(config: CLIPTextConfig = PARITY_L_CONFIG, seed: int = 0) -> CLIPTextModel:
    return randomize_(CLIPTextModel(config), seed).eval()


def random_bigg(config: CLIPTextConfig = PARITY_BIGG_CONFIG, seed: int = 1) -> OpenCLIPTextModel:
    return randomize_(OpenCLIPTextModel(config), seed).eval()


# -- transformers twins, loaded through diffusers' single-file converters (sdxl.md 4b) -------------


def _transformers():
    import transformers

    return transformers


def _single_file_utils():
    from diffusers.loaders import single_file_utils

    return single_file_utils


def hf_config(cfg: CLIPTextConfig):
    """transformers' CLIPTextConfig of the same architecture."""
    return _transformers().CLIPTextConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.width,
        intermediate_size=cfg.mlp_width,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        max_position_embeddings=cfg.max_positions,
        hidden_act=cfg.activation,
        projection_dim=cfg.projection_dim or cfg.width,
        layer_norm_eps=cfg.layer_norm_eps,
    )


def strip_text_model(sd, model):
    """transformers >= 5.6 flattened CLIPTextModel (no `text_model.`); WithProjection keeps it."""
    if any(k.startswith("text_model.") for k in model.state_dict()):
        return sd
    return {k.removeprefix("text_model."): v for k, v in sd.items()}


def hf_clip_l(ours: CLIPTextModel):
    """transformers CLIPTextModel holding our CLIP-L weights, via convert_ldm_clip_checkpoint."""
    sd = {L_PREFIX + k: v for k, v in ours.state_dict().items()}
    converted = _single_file_utils().convert_ldm_clip_checkpoint(sd)
    hf = _transformers().CLIPTextModel(hf_config(ours.config)).eval()
    hf.load_state_dict(strip_text_model(converted, hf), strict=True)
    return hf


def hf_bigg(ours: OpenCLIPTextModel):
    """transformers CLIPTextModelWithProjection holding our bigG weights, via convert_open_clip_checkpoint."""
    sd = {G_PREFIX + k: v for k, v in ours.state_dict().items()}
    hf = _transformers().CLIPTextModelWithProjection(hf_config(ours.config)).eval()
    converted = _single_file_utils().convert_open_clip_checkpoint(hf, sd, prefix=G_PREFIX)
    hf.load_state_dict(converted, strict=True)
    return hf
