"""Load OpenAI CLIP weights from a local file, the standard cache, or clip's download.

Every trainer gets its frozen CLIP from here, so offline use and error messages are
handled once. Weights are loaded in exact fp32: clip's own ``build_model`` rounds them
to fp16, so we restore the file's values after building the module.
"""
import os
import warnings

import torch

from dassl import torchvision_guard  # noqa: F401  (before clip imports torchvision)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # clip imports the deprecated pkg_resources
    import clip
    from clip.model import CLIP, build_model, convert_weights

CLIP_CACHE_DIR = os.path.expanduser("~/.cache/clip")


class ClipWeightsNotFound(FileNotFoundError):
    pass


def default_cache_path(name):
    """Where clip's downloader keeps the weights of a named model."""
    url = clip.clip._MODELS[name]
    return os.path.join(CLIP_CACHE_DIR, os.path.basename(url))


def read_state_dict(path):
    """Read a CLIP state dict from a plain state-dict file or an OpenAI JIT archive."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load is deprecated but still the format
            return torch.jit.load(path, map_location="cpu").state_dict()
    except RuntimeError:
        pass  # not a TorchScript archive
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(
            f'Cannot read CLIP weights from "{path}": it is neither an OpenAI JIT archive nor a '
            f"state dict saved with torch.save ({type(exc).__name__}: {exc}). Check that the "
            "download finished, or regenerate the file."
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or "token_embedding.weight" not in obj:
        raise RuntimeError(
            f'"{path}" does not hold a CLIP state dict (no "token_embedding.weight" key). '
            "MODEL.BACKBONE.PATH must point to CLIP weights, e.g. ViT-B-16.pt."
        )
    return obj


def clip_from_state_dict(state_dict):
    """Build a CLIP module with exactly the given (fp32) weights."""
    state_dict = {k: v for k, v in state_dict.items()}
    model = build_model(dict(state_dict))  # copy: build_model deletes metadata keys
    model.float()
    for key in ("input_resolution", "context_length", "vocab_size"):
        state_dict.pop(key, None)
    model.load_state_dict({k: v.float() for k, v in state_dict.items()})
    return model.eval()


def resolve_weights(name, path=""):
    """Return the file to load for backbone ``name``, downloading only as a last resort."""
    if path:
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            raise ClipWeightsNotFound(
                f'MODEL.BACKBONE.PATH is "{path}", but no file exists there. Pass the path of a CLIP '
                "checkpoint (an OpenAI .pt archive or a state dict), or leave the key empty to use "
                f"{CLIP_CACHE_DIR}."
            )
        return path
    if name not in clip.clip._MODELS:
        raise ValueError(
            f'Unknown CLIP backbone "{name}" (MODEL.BACKBONE.NAME). Available: '
            f"{', '.join(clip.available_models())}; or set MODEL.BACKBONE.PATH to a weights file."
        )
    cached = default_cache_path(name)
    if os.path.isfile(cached):
        return cached
    try:
        return clip.clip._download(clip.clip._MODELS[name], CLIP_CACHE_DIR)
    except Exception as exc:
        raise ClipWeightsNotFound(
            f'CLIP weights for {name} were not found at "{cached}" and could not be downloaded '
            f"({type(exc).__name__}: {exc}). On an offline machine, copy the file from "
            f"{clip.clip._MODELS[name]} to that path, or set MODEL.BACKBONE.PATH to a local copy."
        ) from exc


def load_clip(name, path=""):
    """Load CLIP in fp32 on the CPU; the trainer moves and casts it."""
    return clip_from_state_dict(read_state_dict(resolve_weights(name, path)))


def to_half(model):
    """CLIP's own fp16 conversion: matrices in fp16, LayerNorms kept in fp32 as CLIP expects."""
    convert_weights(model)
    return model


def tokenize(texts):
    """Token ids as int64 (clip packages differ in the dtype they return)."""
    return clip.tokenize(texts).long()


def build_clip(embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
               context_length=77, vocab_size=49408, transformer_width=512, transformer_layers=12):
    """A randomly initialised CLIP of any shape (text heads = width // 64, as CLIP derives them)."""
    return CLIP(embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
                context_length, vocab_size, transformer_width, transformer_width // 64,
                transformer_layers).float().eval()


def tiny_clip(image_resolution=224, layers=12, width=64, patch_size=32, embed_dim=64, seed=0):
    """A small random CLIP with the real architecture, for tests and the demo."""
    torch.manual_seed(seed)
    return build_clip(embed_dim, image_resolution, layers, width, patch_size,
                      transformer_width=width, transformer_layers=layers)


def vit_b16_shaped_clip(seed=0):
    """ViT-B/16's exact shapes with random weights (cost does not depend on weight values)."""
    torch.manual_seed(seed)
    return build_clip(512, 224, 12, 768, 16, transformer_width=512, transformer_layers=12)
