"""MMA: multi-modal adapter (Yang et al., CVPR 2024).

Frozen CLIP with the hand-crafted prompt "{TEXT_CTX_INIT} {class}." and, in layers
ADAPTER_START..ADAPTER_END of both encoders, an adapter added to the block's output:
x_out = block(x) + ADAPTER_SCALE * up(shared(down(ln_1(x)))), where ln_1 is the block's own
LayerNorm, down (d -> ADAPTER_DIM, ReLU) and up (ADAPTER_DIM -> d) belong to one encoder and
shared (ADAPTER_DIM -> ADAPTER_DIM, ReLU) is the same module for the text and the image
adapter of that layer: the coupling of the two modalities. Layers count from 1 (block l-1);
layer 0 adapts the input, the token embeddings of the text and the output of ln_pre.

As released, inside the blocks the adapter's input gradient is scaled by ADAPTER_SCALE and its
output gradient by 1 / ADAPTER_SCALE, so the adapters learn as if unscaled while adding only
a small correction to the frozen features. Adapters start from Kaiming-normal weights and zero
biases, so they are not an identity at initialisation (zeroing the up-projections makes them one).
"""
from collections import OrderedDict

import torch
import torch.nn as nn

from dassl.engine import TRAINER_REGISTRY

from .clip_prompting import PromptedCLIP, PromptTuningTrainer, clean_classname


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN
    cfg.TRAINER.MMA = CN()
    cfg.TRAINER.MMA.TEXT_CTX_INIT = "a photo of a"
    cfg.TRAINER.MMA.ADAPTER_START = 5
    cfg.TRAINER.MMA.ADAPTER_END = 12
    cfg.TRAINER.MMA.ADAPTER_DIM = 32
    cfg.TRAINER.MMA.ADAPTER_SCALE = 0.001
    cfg.TRAINER.MMA.PREC = "fp32"


class ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def adapters(width, layers, start, end, dim):
    """Per-layer adapters (None outside start..end), Kaiming-normal (fan_out) with zero biases.

    width != dim: down (Linear + ReLU) and up (Linear); width == dim (the shared part): Linear + ReLU.
    """
    modules = [None] * (layers + 1)
    for layer in range(start, end + 1):
        if width == dim:
            modules[layer] = nn.Sequential(nn.Linear(width, dim), nn.ReLU())
        else:
            modules[layer] = nn.Sequential(OrderedDict([
                ("down", nn.Sequential(nn.Linear(width, dim), nn.ReLU())), ("up", nn.Linear(dim, width))]))
    modules = nn.ModuleList(modules)
    for m in modules.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return modules


def check_mma_cfg(c, layers):
    def fail(msg):
        raise ValueError(f"TRAINER.MMA: {msg}")
    if not 0 <= c.ADAPTER_START <= c.ADAPTER_END <= layers:
        fail(f"ADAPTER_START {c.ADAPTER_START} and ADAPTER_END {c.ADAPTER_END} must satisfy 0 <= START <= END <= "
             f"{layers} (layer 0: the input, layer l: block l of this CLIP's {layers}).")
    if c.ADAPTER_DIM < 1:
        fail(f"ADAPTER_DIM is {c.ADAPTER_DIM}; the adapters' hidden width must be at least 1.")
    if c.ADAPTER_SCALE <= 0:
        fail(f"ADAPTER_SCALE is {c.ADAPTER_SCALE}; it must be positive (its inverse scales the adapter gradients).")


class AdapterLearner(nn.Module):
    """All learnable tensors of MMA: text, visual and shared adapters per layer (released names)."""

    def __init__(self, c, text_width, vision_width, layers):
        super().__init__()
        self.text_adapter = adapters(text_width, layers, c.ADAPTER_START, c.ADAPTER_END, c.ADAPTER_DIM)
        self.visual_adapter = adapters(vision_width, layers, c.ADAPTER_START, c.ADAPTER_END, c.ADAPTER_DIM)
        self.shared_adapter = adapters(c.ADAPTER_DIM, layers, c.ADAPTER_START, c.ADAPTER_END, c.ADAPTER_DIM)
        self.scale = float(c.ADAPTER_SCALE)

    def adapt(self, branch, layer, x):
        """scale * up(shared(down(x))) with ``branch``'s adapter of ``layer``."""
        adapter = self.text_adapter[layer] if branch == "text" else self.visual_adapter[layer]
        y = adapter.down(x.to(adapter.up.weight.dtype))
        return (adapter.up(self.shared_adapter[layer](y)) * self.scale).to(x.dtype)

    def has(self, layer):
        return self.shared_adapter[layer] is not None

    def input_hook(self, branch):
        """Before-block hook adding layer 0's adapter to the image encoder's input (after ln_pre)."""
        def hook(index, x):
            return x + self.adapt(branch, 0, x) if index == 0 and self.has(0) else x
        return hook

    def after_hook(self, branch, blocks):
        """After-block hook: block i's output plus the adapter of layer i + 1 applied to ln_1(block input)."""
        def after(index, x_in, x_out):
            layer = index + 1
            if not self.has(layer):
                return x_out
            y = self.adapt(branch, layer, blocks.norm1(index)(ScaleGradient.apply(x_in, self.scale)))
            return x_out + ScaleGradient.apply(y, 1.0 / self.scale)
        return after


class MMACLIP(PromptedCLIP):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        c = cfg.TRAINER.MMA
        self.image_encoder.require_vit("TRAINER.MMA", cfg.MODEL.BACKBONE.NAME)
        layers = min(self.text_encoder.num_layers, self.image_encoder.num_layers)
        check_mma_cfg(c, layers)
        prompts = [f"{c.TEXT_CTX_INIT} {clean_classname(name)}." for name in classnames]
        print(f"Prompts: {prompts}")
        ids = self.text_encoder.tokenize(prompts)
        self.register_buffer("tokenized_prompts", ids, persistent=False)
        self.register_buffer("prompt_embeddings", self.text_encoder.embed(ids), persistent=False)
        self.adapter_learner = AdapterLearner(c, self.text_encoder.width, self.image_encoder.width, layers)
        print(f"Adapters in layers {c.ADAPTER_START}..{c.ADAPTER_END}, width {c.ADAPTER_DIM}, "
              f"scale {c.ADAPTER_SCALE}")

    def encode_text(self, prompts):
        learner = self.adapter_learner
        embeddings = self.prompt_embeddings
        if learner.has(0):  # layer 0 adapts the token embeddings, before the positional embedding
            embeddings = embeddings + learner.adapt("text", 0, embeddings)
        after = learner.after_hook("text", self.text_encoder.tower.blocks)
        return self.text_encoder(embeddings, self.text_encoder.pool_index(self.tokenized_prompts), after=after)

    def encode_image(self, images, prompts):
        learner = self.adapter_learner
        after = learner.after_hook("visual", self.image_encoder.tower.blocks)
        return self.image_encoder(images, hook=learner.input_hook("visual"), after=after)


@TRAINER_REGISTRY.register()
class MMA(PromptTuningTrainer):
    cfg_node = "MMA"
    model_name = "adapter_learner"  # the released checkpoint folder name
    learnable_attr = "adapter_learner"

    def build_custom_clip(self, cfg, classnames, clip_model):
        return MMACLIP(cfg, classnames, clip_model)
