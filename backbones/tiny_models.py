"""Small random models of every family, built by each library and written in its own file layout.

They load through the normal path (``load_backbone``), so tests and demos exercise the real loading
and forward code of each family without downloads. All take 224-px images and have 12 blocks of
width 64 in each tower, so the shipped configs (prompt depths up to 12) run on them unchanged.
"""
import json
import os
import secrets
import shutil

import torch

from .interface import CLIP_MEAN, CLIP_STD

FAMILIES = ("openai", "openclip", "siglip", "eva", "pe", "hf")
WIDTH, LAYERS = 64, 12
TEXT = {"context_length": 77, "vocab_size": 49408, "width": WIDTH, "heads": 1, "layers": LAYERS}
HALF = (0.5, 0.5, 0.5)

# OpenCLIP model configs (the format of OpenCLIP's model_configs/*.json) and preprocessing.
OPEN_CLIP_CONFIGS = {
    # a MetaCLIP-style native model: quick GELU, LayerScale in both towers
    "openclip": ({"embed_dim": WIDTH, "quick_gelu": True,
                  "vision_cfg": {"image_size": 224, "layers": LAYERS, "width": WIDTH, "head_width": 64,
                                 "patch_size": 32, "ls_init_value": 0.5},
                  "text_cfg": dict(TEXT, ls_init_value=0.5)}, {}),
    "siglip": ({"embed_dim": WIDTH, "init_logit_bias": -10, "custom_text": True,
                "vision_cfg": {"image_size": 224, "timm_model_name": "tiny_siglip_vit", "timm_model_pretrained": False,
                               "timm_pool": "map", "timm_proj": "none"},
                "text_cfg": dict(TEXT, context_length=64, no_causal_mask=True, proj_bias=True, pool_type="last",
                                 norm_kwargs={"eps": 1e-6})},
               {"mean": HALF, "std": HALF, "interpolation": "bicubic"}),
    "eva": ({"embed_dim": WIDTH, "custom_text": True,
             "vision_cfg": {"image_size": 224, "timm_model_name": "tiny_eva02_vit", "timm_model_pretrained": False,
                            "timm_pool": "token", "timm_proj": None},
             "text_cfg": TEXT}, {}),
    "pe": ({"embed_dim": WIDTH, "custom_text": True,
            "vision_cfg": {"image_size": 224, "timm_model_name": "tiny_pe_core_vit", "timm_model_pretrained": False,
                           "timm_pool": "map", "timm_proj": None},
            "text_cfg": dict(TEXT, context_length=32)},
           {"mean": HALF, "std": HALF, "interpolation": "bilinear"}),
}
BACKBONE_NAMES = {"openai": "ViT-B/16", "openclip": "openclip:tiny-vit", "siglip": "openclip:tiny-siglip",
                  "eva": "openclip:tiny-eva02", "pe": "openclip:tiny-pe-core", "hf": "hf:tiny-clip"}


def build_open_clip(family, seed=0):
    """The library's own model of an OpenCLIP family, randomly initialised."""
    from . import open_clip_family  # noqa: F401  (the torchvision guard, offline mode, tiny timm towers)
    import open_clip
    config, _ = OPEN_CLIP_CONFIGS[family]
    torch.manual_seed(seed)
    model_class = open_clip.CustomTextCLIP if config.get("custom_text") else open_clip.CLIP
    kwargs = {k: v for k, v in config.items() if k != "custom_text"}
    if kwargs.pop("quick_gelu", False):
        kwargs["quick_gelu"] = True
    return model_class(**kwargs).float().eval()


def build_hf_clip(seed=0):
    """A Hugging Face ``transformers`` CLIPModel of the tiny shape (OpenAI's architecture)."""
    from transformers import CLIPConfig, CLIPModel
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"hidden_size": WIDTH, "intermediate_size": 4 * WIDTH, "num_hidden_layers": LAYERS,
                     "num_attention_heads": 1, "max_position_embeddings": 77, "vocab_size": 49408,
                     "hidden_act": "quick_gelu", "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1},
        vision_config={"hidden_size": WIDTH, "intermediate_size": 4 * WIDTH, "num_hidden_layers": LAYERS,
                       "num_attention_heads": 1, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu"},
        projection_dim=WIDTH)
    return CLIPModel(config).float().eval()


def write_tiny_model(output, family, seed=0):
    """Write a small random model of ``family`` to ``output`` (a file for openai, else a folder);
    returns the MODEL.BACKBONE.NAME to load it with."""
    if family not in FAMILIES:
        raise ValueError(f'Unknown family "{family}"; use one of {", ".join(FAMILIES)}.')
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    if family == "openai":
        from dassl.utils import atomic_write_bytes

        from .openai import tiny_clip
        model = tiny_clip(seed=seed)
        atomic_write_bytes(output, lambda f: torch.save(model.state_dict(), f))
        return BACKBONE_NAMES[family]
    # written whole, then moved into place; os.mkdir gives the umask's permissions (mkdtemp's are private)
    staging = os.path.join(parent, f".{os.path.basename(output)}.{secrets.token_hex(6)}.tmp")
    os.mkdir(staging)
    try:
        if family == "hf":
            build_hf_clip(seed).save_pretrained(staging, safe_serialization=True)
        else:
            write_open_clip_folder(staging, family, seed)
        for name in os.listdir(staging):  # ordinary permissions, as the umask says (some writers use 0600)
            os.chmod(os.path.join(staging, name), 0o666 & ~current_umask())
        if os.path.isdir(output):
            shutil.rmtree(output)
        os.replace(staging, output)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)
    return BACKBONE_NAMES[family]


def write_open_clip_folder(folder, family, seed):
    """OpenCLIP's own folder layout: open_clip_config.json and open_clip_model.safetensors."""
    from safetensors.torch import save_file
    config, preprocess = OPEN_CLIP_CONFIGS[family]
    model = build_open_clip(family, seed)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(folder, "open_clip_model.safetensors"))
    preprocess = dict({"size": 224, "mean": CLIP_MEAN, "std": CLIP_STD, "interpolation": "bicubic"}, **preprocess)
    with open(os.path.join(folder, "open_clip_config.json"), "w") as handle:
        json.dump({"model_cfg": config, "preprocess_cfg": preprocess}, handle, indent=2)


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
