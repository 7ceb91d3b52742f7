"""Choose a backbone's family from MODEL.BACKBONE.NAME / PATH and load it from local files."""
import os

from .interface import Backbone

OPENCLIP_PREFIX = "openclip:"
HF_PREFIX = "hf:"


def backbone_family(name, path=""):
    """"openclip", "hf" or "openai", as MODEL.BACKBONE.NAME (and a folder PATH) select."""
    if name.startswith(OPENCLIP_PREFIX):
        return "openclip"
    if name.startswith(HF_PREFIX):
        return "hf"
    if path and os.path.isfile(os.path.join(os.path.expanduser(path), "config.json")):
        return "hf"
    return "openai"


def as_backbone(model):
    """The backbone interface of a library's CLIP module (a Backbone is returned as it is)."""
    if isinstance(model, Backbone):
        return model
    from . import openai
    if isinstance(model, openai.CLIP):
        return openai.OpenAIBackbone(model)
    from . import open_clip_family
    if open_clip_family.is_open_clip_model(model):
        return open_clip_family.OpenCLIPBackbone(model)
    raise TypeError(f"No backbone adapter for {type(model).__module__}.{type(model).__name__}: use an OpenAI "
                    "clip, OpenCLIP or Hugging Face CLIP model (see backbones/).")


def load_backbone(name, path=""):
    """The backbone that MODEL.BACKBONE.NAME names, weights from PATH (or the family's local cache)."""
    family = backbone_family(name, path)
    if family == "openclip":
        from .open_clip_family import load_open_clip
        return load_open_clip(name[len(OPENCLIP_PREFIX):], path)
    if family == "hf":
        from .hf_clip import load_hf_clip
        return load_hf_clip(name[len(HF_PREFIX):] if name.startswith(HF_PREFIX) else name, path)
    from .openai import OpenAIBackbone, load_clip
    return OpenAIBackbone(load_clip(name, path))


def load_backbone_from_cfg(cfg):
    """The backbone of ``cfg.MODEL.BACKBONE``. PATH is this project's key: a config of the original
    Dassl has none, and then the weights come from the family's cache."""
    backbone = cfg.MODEL.BACKBONE
    return load_backbone(backbone.NAME, backbone.get("PATH", ""))
