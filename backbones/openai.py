"""OpenAI CLIP (the ``clip`` package): loading, and its adapter to the backbone interface.

Weights come from a local file, the standard cache, or clip's download, so offline use and
error messages are handled once. Weights are loaded in exact fp32: clip's own ``build_model`` rounds them
to fp16, so we restore the file's values after building the module. The architecture
is read from the file's shapes, checked against MODEL.BACKBONE.NAME and logged as
``CLIP architecture: <name>``.
"""
import os
import warnings

import torch

try:  # this project's engine makes torchvision importable on CPU-only torch (before clip imports it)
    from dassl import torchvision_guard  # noqa: F401
except ImportError:
    pass  # the original Dassl: torchvision is used as installed

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # clip imports the deprecated pkg_resources
    import clip
    from clip.model import CLIP, build_model, convert_weights

from .blocks import MultiheadAttentionBlocks
from .interface import Backbone, Preprocessing, TextTower, Tokenizer, VisionTower

CLIP_CACHE_DIR = os.path.expanduser("~/.cache/clip")

# OpenAI's released models, told apart by their image tower:
# ("ViT", width, layers, patch, input px, embed dim) or ("ResNet", blocks per stage, width, input px, embed dim).
STANDARD_ARCHITECTURES = {
    ("ViT", 768, 12, 32, 224, 512): "ViT-B/32",
    ("ViT", 768, 12, 16, 224, 512): "ViT-B/16",
    ("ViT", 1024, 24, 14, 224, 768): "ViT-L/14",
    ("ViT", 1024, 24, 14, 336, 768): "ViT-L/14@336px",
    ("ResNet", (3, 4, 6, 3), 64, 224, 1024): "RN50",
    ("ResNet", (3, 4, 23, 3), 64, 224, 512): "RN101",
    ("ResNet", (4, 6, 10, 6), 80, 288, 640): "RN50x4",
    ("ResNet", (6, 8, 18, 8), 96, 384, 768): "RN50x16",
    ("ResNet", (3, 15, 36, 10), 128, 448, 1024): "RN50x64",
}
# Keys every CLIP state dict has, ViT and ResNet alike.
CLIP_KEYS = ("token_embedding.weight", "positional_embedding", "text_projection", "ln_final.weight", "logit_scale",
             "visual.conv1.weight")


class ClipWeightsNotFound(FileNotFoundError):
    pass


class ClipWeightsError(ValueError):
    """The weights file is not usable CLIP weights, or not the CLIP that MODEL.BACKBONE.NAME names."""


def default_cache_path(name):
    """Where clip's downloader keeps the weights of a named model."""
    url = clip.clip._MODELS[name]
    return os.path.join(CLIP_CACHE_DIR, os.path.basename(url))


def describe_vision(visual_state):
    """Name of a CLIP image tower from its state dict (keys without "visual."): a standard name
    such as "ViT-B/16", else e.g. "ViT (custom: width 64, 12 layers, patch 32, 224 px)"."""
    if "proj" in visual_state:  # ViT (clip's own test)
        width, _, patch, _ = visual_state["conv1.weight"].shape
        layers = len({k.split(".")[2] for k in visual_state if k.startswith("transformer.resblocks.")})
        pixels = patch * round((visual_state["positional_embedding"].shape[0] - 1) ** 0.5)
        shape = ("ViT", width, layers, patch, pixels, visual_state["proj"].shape[1])
        custom = f"ViT (custom: width {width}, {layers} layers, patch {patch}, {pixels} px)"
    else:  # ModifiedResNet: 32x downsampling before the attention pool
        blocks = tuple(len({k.split(".")[1] for k in visual_state if k.startswith(f"layer{i}.")}) for i in (1, 2, 3, 4))
        width = visual_state["layer1.0.conv1.weight"].shape[0]
        pixels = 32 * round((visual_state["attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        shape = ("ResNet", blocks, width, pixels, visual_state["attnpool.c_proj.weight"].shape[0])
        custom = f"ResNet (custom: blocks {'-'.join(map(str, blocks))}, width {width}, {pixels} px)"
    return STANDARD_ARCHITECTURES.get(shape, custom)


def vision_architecture(visual):
    """Name of a live CLIP image tower (``clip_model.visual``)."""
    return describe_vision(visual.state_dict())


def family(architecture):
    return "ViT" if architecture.startswith("ViT") else "ResNet"


def read_state_dict(path):
    """Read a CLIP state dict from a plain state-dict file or an OpenAI JIT archive.

    Each way a file can be wrong (empty, not a PyTorch file, truncated, Python objects,
    not CLIP) gets its own ``ClipWeightsError`` naming the file and what was looked for."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        raise ClipWeightsError(f'CLIP weights file "{path}" is empty (0 bytes): the download or copy did not '
                               "finish. Fetch the file again, or set MODEL.BACKBONE.PATH to another one.")
    if not head.startswith(b"PK") and not head.startswith(b"\x80"):  # zip archive or legacy torch pickle
        raise ClipWeightsError(
            f'"{path}" is not a PyTorch file: looked for CLIP weights (an OpenAI .pt archive or a state dict saved '
            f"with torch.save), but it starts with {head!r}, like a text or HTML page. Set MODEL.BACKBONE.PATH "
            "to the CLIP weights file, e.g. ViT-B-16.pt.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load is deprecated but still the format
            return torch.jit.load(path, map_location="cpu").state_dict()
    except RuntimeError:
        pass  # not a TorchScript archive
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "Weights only load failed" in str(exc) and "Unsupported" in str(exc):
            raise ClipWeightsError(
                f'"{path}" holds pickled Python objects, not a plain state dict of CLIP weights, and is not loaded '
                "(unpickling can run code). Save the model's state_dict() with torch.save and point "
                "MODEL.BACKBONE.PATH at that file.") from exc
        raise ClipWeightsError(
            f'Cannot read CLIP weights from "{path}": the file is truncated or corrupt ({type(exc).__name__}: '
            f"{str(exc).splitlines()[0]}). Fetch it again, or regenerate it.") from exc
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    keys = list(obj) if isinstance(obj, dict) else []
    missing = [key for key in CLIP_KEYS if key not in keys]
    if missing:
        found = f"; it has {', '.join(map(str, keys[:4]))}{', ...' if len(keys) > 4 else ''}" if keys else \
            f"; it holds a {type(obj).__name__}"
        raise ClipWeightsError(
            f'"{path}" does not hold a CLIP state dict: looked for CLIP\'s keys ({", ".join(missing)}){found}. '
            "MODEL.BACKBONE.PATH must point to CLIP weights, e.g. ViT-B-16.pt.")
    return obj


def file_architecture(state_dict, path):
    """Name of the CLIP in ``state_dict`` (read from ``path``), see ``describe_vision``."""
    visual = {k[len("visual."):]: v for k, v in state_dict.items() if k.startswith("visual.")}
    try:
        return describe_vision(visual)
    except (KeyError, IndexError, ValueError) as exc:
        raise ClipWeightsError(f'"{path}" has CLIP\'s text keys but no CLIP image tower (looked for visual.proj '
                               f"of a ViT or visual.attnpool.* of a ResNet; missing {exc}).") from exc


def check_architecture(name, architecture, path):
    """Stop when MODEL.BACKBONE.NAME names another CLIP than the file holds.

    A custom CLIP (a tiny or mini CLIP for tests and demos) may run under a standard name of
    its own family, as the configs' "ViT-B/16"; the log then names what actually runs."""
    if name not in clip.available_models() or name == architecture:
        return
    standard = architecture in clip.available_models()
    if standard or family(name) != family(architecture):
        fix = f"set MODEL.BACKBONE.NAME {architecture}" if standard else \
            f"use a {family(architecture)} name for MODEL.BACKBONE.NAME"
        raise ClipWeightsError(f'MODEL.BACKBONE.NAME is {name}, but "{path}" holds {architecture} weights: {fix}, '
                               f"or point MODEL.BACKBONE.PATH at {name} weights.")
    print(f"Note: {path} holds a custom CLIP, not the standard {name} that MODEL.BACKBONE.NAME names")


def clip_from_state_dict(state_dict, path="the weights file"):
    """Build a CLIP module with exactly the given (fp32) weights."""
    state_dict = {k: v for k, v in state_dict.items()}
    try:
        model = build_model(dict(state_dict))  # copy: build_model deletes metadata keys
        model.float()
        for key in ("input_resolution", "context_length", "vocab_size"):
            state_dict.pop(key, None)
        model.load_state_dict({k: v.float() for k, v in state_dict.items()})
    except (KeyError, RuntimeError, ValueError, IndexError) as exc:
        raise ClipWeightsError(f'"{path}" has CLIP\'s keys, but its tensors do not form a CLIP model '
                               f"({type(exc).__name__}: {str(exc).splitlines()[0]}). Fetch it again, or "
                               "regenerate it.") from exc
    return model.eval()


def resolve_weights(name, path=""):
    """Return the file to load for backbone ``name``, downloading only as a last resort."""
    if path:
        path = os.path.expanduser(path)
        if os.path.isdir(path):
            raise ClipWeightsNotFound(f'MODEL.BACKBONE.PATH is "{path}", a folder; point it at the CLIP weights '
                                      "file inside, e.g. ViT-B-16.pt.")
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
    """Load CLIP in fp32 on the CPU (the trainer moves and casts it), after checking that the
    file holds the architecture MODEL.BACKBONE.NAME names."""
    path = resolve_weights(name, path)
    state_dict = read_state_dict(path)
    architecture = file_architecture(state_dict, path)
    check_architecture(name, architecture, path)
    print(f"CLIP architecture: {architecture}")
    return clip_from_state_dict(state_dict, path)


def load_clip_from_cfg(cfg):
    """CLIP of ``cfg.MODEL.BACKBONE``. PATH is this project's key: a config of the original
    Dassl has none, and then the weights come from the CLIP cache as there."""
    backbone = cfg.MODEL.BACKBONE
    return load_clip(backbone.NAME, backbone.get("PATH", ""))


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


# -- the adapter ---------------------------------------------------------------------------
def count_tokens(text):
    """BPE tokens of ``text`` in a sequence (without SOS/EOT)."""
    return int(tokenize([text]).argmax(dim=-1)) - 1


OPENAI_TOKENIZER = Tokenizer(tokenize, count_tokens, context_length=77, prefix_length=1,
                             encode_truncated=lambda texts: clip.tokenize(texts, truncate=True))


class OpenAITextTower(TextTower):
    """``clip.model.CLIP``'s text transformer: causal, pooled at the EOT token (the largest id)."""

    def __init__(self, clip_model):
        super().__init__()
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.blocks = MultiheadAttentionBlocks(self.transformer.resblocks, sequence_first=True)

    @property
    def dtype(self):
        return self.text_projection.dtype

    def pool_index(self, ids):
        return ids.argmax(dim=-1)

    def project(self, x):
        return x @ self.text_projection


class OpenAIVisionTower(VisionTower):
    """``clip.model.CLIP``'s image tower: a ViT with CLS pooling, or a ModifiedResNet."""

    def __init__(self, visual):
        super().__init__()
        self.visual = visual
        self.is_transformer = hasattr(visual, "transformer")
        if self.is_transformer:
            self.pre_norm = visual.ln_pre
            self.blocks = MultiheadAttentionBlocks(visual.transformer.resblocks, sequence_first=True)
            self.width = visual.conv1.weight.shape[0]

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype

    def embed(self, images):
        """Patch tokens with CLS and positional embedding: (B, 1 + patches, D)."""
        v = self.visual
        x = v.conv1(images.type(self.dtype)).flatten(2).transpose(1, 2)
        cls = v.class_embedding.type(self.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + v.positional_embedding.type(self.dtype), None

    def pool(self, x):
        return self.visual.ln_post(x[:, 0]) @ self.visual.proj

    def token_norm(self, x):
        return self.visual.ln_post(x)

    def project(self, x):
        return x @ self.visual.proj

    def plain(self, images):
        return self.visual(images.type(self.dtype))


class OpenAIBackbone(Backbone):
    family = "openai"

    def __init__(self, clip_model, family="openai"):
        visual = clip_model.visual
        super().__init__(clip_model, OpenAITextTower(clip_model), OpenAIVisionTower(visual), OPENAI_TOKENIZER,
                         clip_model.logit_scale, None, Preprocessing(size=visual.input_resolution),
                         clip_model.text_projection.shape[1])
        self.family = family
        self.architecture = vision_architecture(visual)

    def to_half(self):
        """CLIP's own fp16 conversion: matrices in fp16, LayerNorms kept in fp32 as CLIP expects."""
        convert_weights(self.model)
        return self

    def round_to_half(self, keep_half=False):
        """What clip.build_model does to the weights: CLIP's fp16 conversion; then, unless ``keep_half``,
        ``.float()`` as the released trainers call for fp32 and amp, which restores only the dtype."""
        convert_weights(self.model)
        if not keep_half:
            self.model.float()
        return self
