"""Small timm vision towers of the SigLIP, EVA-02 and PE-Core designs, for tests and demos.

timm has no SigLIP tower smaller than ViT-B, and its EVA-02 and PE-Core towers take 14-px
patches or 384-px images. These register the same classes (timm's ``VisionTransformer`` and
``Eva``) with the real designs at width 64, 12 blocks, 32-px patches of 224-px images, so that
``tools/make_tiny_clip.py`` can write an OpenCLIP folder naming them and the normal loading
path builds them. Registered under names of their own, once, when ``backbones`` loads OpenCLIP.
"""
from functools import partial

import torch.nn as nn
from timm.models import register_model
from timm.models._registry import is_model
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer

SHAPE = dict(img_size=224, patch_size=32, embed_dim=64, depth=12, num_heads=2)


def model_args(kwargs):
    """timm.create_model's keyword arguments that the model classes take (not its registry's)."""
    return {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}


def tiny_siglip_vit(pretrained=False, **kwargs):
    """SigLIP's tower: no class token, learned position embeddings, attention-pool (MAP) head."""
    args = dict(SHAPE, class_token=False, global_pool="map")
    return VisionTransformer(**dict(args, **model_args(kwargs)))


def tiny_eva02_vit(pretrained=False, **kwargs):
    """EVA-02's tower: class token, rotary position embeddings, SwiGLU MLP."""
    args = dict(SHAPE, mlp_ratio=4 * 2 / 3, swiglu_mlp=True, use_rot_pos_emb=True, ref_feat_shape=(7, 7))
    return Eva(**dict(args, **model_args(kwargs)))


def tiny_pe_core_vit(pretrained=False, **kwargs):
    """PE-Core's tower: rotary attention, a LayerNorm before the blocks, attention-pool head."""
    args = dict(SHAPE, mlp_ratio=4.0, global_pool="map", attn_type="rope", use_pre_transformer_norm=True,
                use_rot_pos_emb=True, ref_feat_shape=(7, 7), rope_grid_offset=1.0, rope_grid_indexing="xy",
                attn_pool_num_heads=2, attn_pool_mlp_ratio=4.0, norm_layer=partial(nn.LayerNorm, eps=1e-5))
    return Eva(**dict(args, **model_args(kwargs)))


for _fn in (tiny_siglip_vit, tiny_eva02_vit, tiny_pe_core_vit):
    if not is_model(_fn.__name__):
        register_model(_fn)
