"""OpenCLIP (``open_clip_torch``): native towers and timm vision towers, behind the backbone interface.

Native towers (LAION, DataComp, DFN, MetaCLIP models): CLIP-style blocks with optional
LayerScale, CLS or average pooling, ``final_ln_after_pool``, a text projection matrix or a
Linear with bias, and text with or without a causal mask. timm towers: SigLIP/SigLIP2 (no CLS
token, attention-pool "MAP" head, ``logit_bias``, 64-token text pooled on the last token, no
causal mask), EVA-02 (rotary position embeddings, SwiGLU) and PE-Core (rotary, attention pool).

Visual prompt tokens go after the patches in towers with absolute position embeddings; in
towers with rotary embeddings (EVA-02, PE-Core) they go right after the class token, as extra
prefix tokens: timm's rotary attention leaves its ``num_prefix_tokens`` leading tokens without a
rotary embedding, so prompts there carry no position, as CLS carries none.

Weights load from local files only: a file with MODEL.BACKBONE.NAME ``openclip:<model>`` (an
OpenCLIP model name), an OpenCLIP folder (``open_clip_config.json`` + weights), or a
pretrained tag (``openclip:<model>@<tag>``) already in the Hugging Face cache.
"""
import json
import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the project never downloads at run time

try:  # this project's engine makes torchvision importable on CPU-only torch (open_clip imports it)
    from dassl import torchvision_guard  # noqa: E402,F401
except ImportError:
    pass  # the original Dassl: torchvision is used as installed

import open_clip  # noqa: E402
from open_clip.timm_model import TimmModel  # noqa: E402
from open_clip.transformer import ResidualAttentionBlock, TextTransformer  # noqa: E402
from open_clip.transformer import VisionTransformer as OpenCLIPViT  # noqa: E402

from . import tiny_timm  # noqa: E402,F401  (registers the small test towers with timm)
from .blocks import MultiheadAttentionBlocks, TimmBlocks  # noqa: E402
from .interface import Backbone, Preprocessing, TextTower, Tokenizer, VisionTower  # noqa: E402
from .openai import ClipWeightsError, ClipWeightsNotFound, OpenAIVisionTower  # noqa: E402

CONFIG_FILE = "open_clip_config.json"


class UnsupportedBackbone(ValueError):
    pass


def is_open_clip_model(model):
    return isinstance(model, (open_clip.model.CLIP, open_clip.model.CustomTextCLIP))


class OpenCLIPTextTower(TextTower):
    """OpenCLIP's text transformer (``TextTransformer``, or the parts a plain ``CLIP`` keeps itself)."""

    def __init__(self, model):
        super().__init__()
        text = getattr(model, "text", model)
        if text is not model and not isinstance(text, TextTransformer):
            raise UnsupportedBackbone(f"This OpenCLIP model's text tower is a {type(text).__name__} (a Hugging Face "
                                      "text model); only OpenCLIP's own text transformer is supported.")
        if getattr(text, "cls_emb", None) is not None or getattr(text, "use_pad_mask", False):
            raise UnsupportedBackbone("This OpenCLIP text tower appends a CLS token or masks padding (CoCa-style); "
                                      "it is not supported.")
        if not all(isinstance(b, ResidualAttentionBlock) for b in text.transformer.resblocks):
            raise UnsupportedBackbone("This OpenCLIP text tower uses custom attention blocks (scaled cosine "
                                      "attention or extra norms); only the standard blocks are supported.")
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.transformer = text.transformer
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        mask = text.attn_mask
        self.causal = mask is not None
        if text is model:  # a plain CLIP keeps its text settings under these names
            self.pool_type, self.eos_id = model.text_pool_type, model.text_eos_id
        else:
            self.pool_type, self.eos_id = text.pool_type, text.eos_id
        self.blocks = MultiheadAttentionBlocks(self.transformer.resblocks,
                                               sequence_first=not self.transformer.batch_first, mask=mask)

    @property
    def dtype(self):
        return self.transformer.get_cast_dtype()

    def pool_index(self, ids):
        rows = ids.shape[0]
        if self.pool_type == "argmax":
            return ids.argmax(dim=-1)
        if self.pool_type == "eos":
            return (ids == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "last":
            return torch.full((rows,), ids.shape[1] - 1, dtype=torch.long, device=ids.device)
        if self.pool_type == "first":
            return torch.zeros(rows, dtype=torch.long, device=ids.device)
        raise UnsupportedBackbone(f'OpenCLIP text pool type "{self.pool_type}" gives no single feature per text.')

    def project(self, x):
        projection = self.text_projection
        if projection is None:
            return x
        if isinstance(projection, torch.nn.Linear):
            return projection(x)
        return x @ projection


class OpenCLIPVisionTower(OpenAIVisionTower):
    """OpenCLIP's own ViT: OpenAI's patch embedding and CLS token, LayerScale blocks (batch-first),
    OpenCLIP's pooling (CLS or average, ``final_ln_after_pool``, attention pool) and projection."""

    def __init__(self, visual):
        if not all(isinstance(b, ResidualAttentionBlock) for b in visual.transformer.resblocks):
            raise UnsupportedBackbone("This OpenCLIP image tower uses custom attention blocks; only the standard "
                                      "blocks are supported.")
        super().__init__(visual)
        self.blocks = MultiheadAttentionBlocks(visual.transformer.resblocks,
                                               sequence_first=not visual.transformer.batch_first)

    def pool(self, x):
        pooled, _ = self.visual._pool(x)
        return pooled if self.visual.proj is None else pooled @ self.visual.proj

    def token_norm(self, x):
        if self.visual.attn_pool is not None:  # its final norm acts on the attention pool's output
            raise NotImplementedError("This OpenCLIP image tower pools with attention before its final norm")
        return self.visual.ln_post(x)

    def project(self, x):
        return x if self.visual.proj is None else x @ self.visual.proj


class TimmVisionTower(VisionTower):
    """A timm ViT or EVA trunk inside OpenCLIP's ``TimmModel``; other trunks (ConvNeXt) run whole."""

    def __init__(self, visual):
        super().__init__()
        self.visual = visual
        trunk = visual.trunk
        self.is_transformer = hasattr(trunk, "blocks") and hasattr(trunk, "_pos_embed")
        if self.is_transformer:
            self.rotary = getattr(trunk, "rope", None) is not None
            self.prompt_placement = "prefix" if self.rotary else "append"
            self.num_prefix_tokens = trunk.num_prefix_tokens
            self.pre_norm = trunk.norm_pre
            self.blocks = TimmBlocks(trunk.blocks)
            self.width = trunk.embed_dim

    @property
    def dtype(self):
        return next(self.visual.trunk.parameters()).dtype

    def embed(self, images):
        trunk = self.visual.trunk
        x = trunk.patch_embed(images.type(self.dtype))
        if not self.rotary:
            return trunk.patch_drop(trunk._pos_embed(x)), None
        x, rope = trunk._pos_embed(x)
        return x, {"rope": rope, "rope_per_block": getattr(trunk, "rope_mixed", False)}

    def pool(self, x):
        trunk = self.visual.trunk
        return self.visual.head(trunk.forward_head(trunk.norm(x)))

    def token_norm(self, x):
        # each token normalised as the pooled feature is: timm's norm, then the fc_norm of an averaging trunk
        trunk = self.visual.trunk
        return trunk.fc_norm(trunk.norm(x))

    def project(self, x):
        return self.visual.head(x)

    def plain(self, images):
        return self.visual(images.type(self.dtype))


def vision_tower(visual):
    if isinstance(visual, OpenCLIPViT):
        return OpenCLIPVisionTower(visual)
    if isinstance(visual, TimmModel):
        return TimmVisionTower(visual)
    return WholeVisionTower(visual)


class WholeVisionTower(VisionTower):
    """A tower run only as a whole (OpenCLIP's ModifiedResNet): image features, no prompts."""

    is_transformer = False

    def __init__(self, visual):
        super().__init__()
        self.visual = visual

    @property
    def dtype(self):
        return next(self.visual.parameters()).dtype

    def plain(self, images):
        return self.visual(images.type(self.dtype))


def describe(model, name):
    """e.g. "ViT-B-16 (timm vit_base_patch16_siglip_224)" or "ViT (width 64, 12 layers, patch 32, 224 px)"."""
    visual = model.visual
    if isinstance(visual, TimmModel):
        config = getattr(visual.trunk, "pretrained_cfg", None) or {}
        inner = f"timm {config.get('architecture', type(visual.trunk).__name__)}"
    elif isinstance(visual, OpenCLIPViT):
        inner = (f"ViT width {visual.conv1.weight.shape[0]}, {len(visual.transformer.resblocks)} layers, "
                 f"patch {visual.patch_size[0]}, {visual.image_size[0]} px")
    else:
        inner = type(visual).__name__
    return f"{name} ({inner})" if name else inner


def preprocessing_of(model):
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else size
    return Preprocessing(size=int(size), mean=tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                         std=tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
                         interpolation=cfg.get("interpolation", "bicubic"))


def simple_tokenizer(context_length, **kwargs):
    """OpenCLIP's BPE tokenizer (OpenAI's vocabulary) at the model's context length."""
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length, **kwargs)
    return Tokenizer(lambda texts: tokenizer(texts), lambda text: len(tokenizer.encode(text)), context_length)


def hf_tokenizer(name, context_length, folder="", **kwargs):
    """A Hugging Face tokenizer (SigLIP's), from ``folder`` or the local cache only."""
    sources = [s for s in (folder, name) if s]
    last = None
    for source in sources:
        try:
            tokenizer = open_clip.tokenizer.HFTokenizer(source, context_length=context_length, **kwargs)
            break
        except Exception as exc:  # transformers raises OSError, ValueError, ... when files are missing
            last = exc
    else:
        raise ClipWeightsNotFound(
            f'The tokenizer of this backbone ("{name}") is not available locally ({type(last).__name__}: '
            f"{str(last).splitlines()[0] if str(last) else ''}). Download it once where the network is "
            f"reachable, e.g. `huggingface-cli download {name}`, or put its tokenizer files beside the weights in "
            "the folder MODEL.BACKBONE.PATH names.") from last
    inner = tokenizer.tokenizer
    specials = set(inner.all_special_ids)
    sample = tokenizer(["a"])[0].tolist()
    leading = next((i for i, t in enumerate(sample) if t not in specials), 0)
    clean = getattr(tokenizer, "clean_fn", lambda t: t)
    return Tokenizer(lambda texts: tokenizer(texts),
                     lambda text: len(inner(clean(text), add_special_tokens=False)["input_ids"]),
                     context_length, prefix_length=leading)


def tokenizer_for(model_cfg, folder=""):
    text_cfg = model_cfg.get("text_cfg", {})
    context_length = text_cfg.get("context_length", 77)
    kwargs = text_cfg.get("tokenizer_kwargs", {})
    if text_cfg.get("hf_tokenizer_name"):
        return hf_tokenizer(text_cfg["hf_tokenizer_name"], context_length, folder, **kwargs)
    return simple_tokenizer(context_length, **kwargs)


class OpenCLIPBackbone(Backbone):
    family = "openclip"

    def __init__(self, model, tokenizer=None, name=""):
        text = OpenCLIPTextTower(model)
        if tokenizer is None:
            tokenizer = simple_tokenizer(text.positional_embedding.shape[0])
        projection = text.text_projection
        embed_dim = (text.width if projection is None else projection.out_features
                     if isinstance(projection, torch.nn.Linear) else projection.shape[1])
        super().__init__(model, text, vision_tower(model.visual), tokenizer, model.logit_scale,
                         getattr(model, "logit_bias", None), preprocessing_of(model), embed_dim)
        self.architecture = describe(model, name)

    def to_half(self):
        self.model.half()
        return self


def model_config_of(folder):
    with open(os.path.join(folder, CONFIG_FILE)) as handle:
        return json.load(handle).get("model_cfg", {})


def load_open_clip(spec, path=""):
    """The OpenCLIP backbone ``openclip:<spec>`` (spec: a model name, optionally ``@<pretrained tag>``)."""
    name, _, tag = spec.partition("@")
    path = os.path.expanduser(path) if path else ""
    if path and os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
            raise ClipWeightsNotFound(f'MODEL.BACKBONE.PATH is the folder "{path}", but it has no {CONFIG_FILE}: an '
                                      "OpenCLIP folder holds that file and the weights (open_clip_model.safetensors "
                                      "or open_clip_pytorch_model.bin); or point PATH at a weights file.")
        model = build(lambda: open_clip.create_model(f"local-dir:{path}"), path)
        tokenizer = tokenizer_for(model_config_of(path), path)
    elif path:
        if not os.path.isfile(path):
            raise ClipWeightsNotFound(f'MODEL.BACKBONE.PATH is "{path}", but no file exists there. Pass an OpenCLIP '
                                      "weights file, or a folder with open_clip_config.json and the weights.")
        config = open_clip.get_model_config(name)
        if config is None:
            raise ClipWeightsError(f'MODEL.BACKBONE.NAME is openclip:{name}, but OpenCLIP knows no model "{name}" to '
                                   f'build for the weights in "{path}". Use one of open_clip.list_models() (e.g. '
                                   "ViT-B-16, ViT-B-16-SigLIP, EVA02-B-16), or a folder with its own "
                                   f"{CONFIG_FILE}.")
        model = build(lambda: open_clip.create_model(name, pretrained=path), path)
        tokenizer = tokenizer_for(config)
    elif tag:
        config = open_clip.get_model_config(name)
        try:
            model = open_clip.create_model(name, pretrained=tag)
        except Exception as exc:
            raise ClipWeightsNotFound(
                f"OpenCLIP weights {name} ({tag}) are not in the local cache and nothing is downloaded at run time "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Fetch them once where the "
                f"network is reachable (open_clip.create_model('{name}', pretrained='{tag}') caches them), or set "
                "MODEL.BACKBONE.PATH to a local weights file.") from exc
        tokenizer = tokenizer_for(config or {})
    else:
        raise ClipWeightsNotFound(f"MODEL.BACKBONE.NAME is openclip:{spec}, but no weights are named: set "
                                  "MODEL.BACKBONE.PATH to a weights file or an OpenCLIP folder, or name a pretrained "
                                  f"tag already in the local cache, e.g. openclip:{name}@<tag> (tags: "
                                  f"open_clip.list_pretrained_tags_by_model('{name}')).")
    model = model.float().eval()
    backbone = OpenCLIPBackbone(model, tokenizer, name)
    print(f"CLIP architecture: {backbone.architecture}")
    return backbone


def build(create, path):
    try:
        return create()
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        raise ClipWeightsError(f'Cannot build an OpenCLIP model from "{path}" ({type(exc).__name__}: '
                               f"{str(exc).splitlines()[0] if str(exc) else ''}). Check that the weights match the "
                               "model name or the folder's open_clip_config.json.") from exc
