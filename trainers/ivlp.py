"""IVLP: independent deep prompts in the text and the image encoder, with no coupling.

The baseline of the MaPLe paper. Text: n_t learnable vectors right after SOS (word-initialised
from CTX_INIT), and a fresh set replacing them before text blocks 1..D_t-1. Vision: n_v
vectors appended after the patch tokens, and a fresh set replacing the last n_v tokens
before vision blocks 1..D_v-1.

A depth of 0 switches a modality's prompts off: PROMPT_DEPTH_VISION 0 is deep language
prompting, PROMPT_DEPTH_TEXT 0 keeps the CTX_INIT template as fixed text, and both at 0 is
zero-shot CLIP with that template.
"""
import torch
import torch.nn as nn

from dassl.engine import TRAINER_REGISTRY

from .clip_prompting import (ClassPrompts, PromptedCLIP, PromptTuningTrainer, deep_prompt_hook, init_context,
                             template_text_features)


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN  # as CoOp: the original dassl.config exports no CfgNode
    cfg.TRAINER.IVLP = CN()
    cfg.TRAINER.IVLP.N_CTX_TEXT = 2
    cfg.TRAINER.IVLP.N_CTX_VISION = 2
    cfg.TRAINER.IVLP.CTX_INIT = "a photo of a"
    cfg.TRAINER.IVLP.PROMPT_DEPTH_TEXT = 9
    cfg.TRAINER.IVLP.PROMPT_DEPTH_VISION = 9
    cfg.TRAINER.IVLP.PREC = "fp32"


def check_prompt_depth(node, depth_key, depth, length_key, length, layers):
    """Depth 0 (prompts off) to ``layers``; a prompted encoder needs at least one token."""
    if not 0 <= depth <= layers:
        raise ValueError(f"TRAINER.{node}: {depth_key} is {depth}, but this CLIP has {layers} layers in that "
                         f"encoder; use 0 (no prompts) to {layers}.")
    if depth > 0 and length < 1:
        raise ValueError(f"TRAINER.{node}: {length_key} is {length} with {depth_key} {depth}; a prompted "
                         f"encoder needs at least 1 token (or set {depth_key} 0 to switch its prompts off).")


class DeepPrompts(nn.Module):
    """One encoder's prompts: ``ctx`` (n, d) enters with the input, ``deep_ctx`` (D-1, n, d)
    replaces the prompt slots before blocks 1..D-1. Random ones are drawn from N(0, 0.02)."""

    def __init__(self, depth, length, width, ctx=None):
        super().__init__()
        if ctx is None:
            ctx = nn.init.normal_(torch.empty(length, width), std=0.02)
        self.ctx = nn.Parameter(ctx)
        self.deep_ctx = nn.Parameter(nn.init.normal_(torch.empty(depth - 1, length, width), std=0.02))

    @property
    def length(self):
        return self.ctx.shape[0]

    def hook(self, start):
        """The encoder hook that writes ``deep_ctx`` into the slots at ``start``."""
        return deep_prompt_hook(self.deep_ctx, start)


class IVLPPromptLearner(nn.Module):
    """``node``: the config node holding the IVLP keys (PromptSRC reuses this learner)."""

    def __init__(self, cfg, classnames, text_encoder, image_encoder, node="IVLP"):
        super().__init__()
        c = getattr(cfg.TRAINER, node)
        check_prompt_depth(node, "PROMPT_DEPTH_TEXT", c.PROMPT_DEPTH_TEXT, "N_CTX_TEXT", c.N_CTX_TEXT,
                           text_encoder.num_layers)
        if c.PROMPT_DEPTH_VISION:
            image_encoder.require_vit(f"TRAINER.{node}", cfg.MODEL.BACKBONE.NAME, ", or PROMPT_DEPTH_VISION 0")
        check_prompt_depth(node, "PROMPT_DEPTH_VISION", c.PROMPT_DEPTH_VISION, "N_CTX_VISION", c.N_CTX_VISION,
                           image_encoder.num_layers)
        self.text = self.vision = None
        if c.PROMPT_DEPTH_TEXT:
            ctx, prefix = init_context(text_encoder, c.N_CTX_TEXT, c.CTX_INIT, owner=f"TRAINER.{node}")
            print(f'Initial text context: "{prefix}"')
            self.text = DeepPrompts(c.PROMPT_DEPTH_TEXT, c.N_CTX_TEXT, text_encoder.width, ctx)
            self.classes = ClassPrompts(text_encoder, classnames, prefix, c.N_CTX_TEXT)
        else:
            template = (c.CTX_INIT.replace("_", " ").strip() + " {}.").lstrip()
            self.register_buffer("fixed_text_features",
                                 template_text_features(text_encoder, classnames, template), persistent=False)
        if c.PROMPT_DEPTH_VISION:
            self.vision = DeepPrompts(c.PROMPT_DEPTH_VISION, c.N_CTX_VISION, image_encoder.width)
        print(f"Text prompts: {c.N_CTX_TEXT if self.text else 0} tokens, depth {c.PROMPT_DEPTH_TEXT}; "
              f"visual prompts: {c.N_CTX_VISION if self.vision else 0} tokens, depth {c.PROMPT_DEPTH_VISION}")


class IVLPCLIP(PromptedCLIP):
    def __init__(self, cfg, classnames, clip_model, node="IVLP"):
        super().__init__(clip_model)
        self.prompt_learner = IVLPPromptLearner(cfg, classnames, self.text_encoder, self.image_encoder, node)

    def encode_text(self, prompts):
        learner = self.prompt_learner
        if learner.text is None:
            return learner.fixed_text_features
        classes = learner.classes
        return self.text_encoder(classes.assemble(learner.text.ctx), classes.eot_index,
                                 hook=learner.text.hook(start=self.text_encoder.prompt_start))  # slots after SOS

    def encode_image(self, images, prompts):
        vision = self.prompt_learner.vision
        if vision is None:
            return self.image_encoder(images)
        return self.image_encoder(images, vision.ctx, hook=vision.hook(self.image_encoder.prompt_start(vision.length)))


@TRAINER_REGISTRY.register()
class IVLP(PromptTuningTrainer):
    cfg_node = "IVLP"
    model_name = "VLPromptLearner"  # the released checkpoint folder name
    learnable_attr = "prompt_learner"

    def check_cfg(self, cfg):
        c = cfg.TRAINER.IVLP
        if c.PROMPT_DEPTH_TEXT == 0 and c.PROMPT_DEPTH_VISION == 0:
            raise ValueError("TRAINER.IVLP: PROMPT_DEPTH_TEXT and PROMPT_DEPTH_VISION are both 0, so there is "
                             "nothing to train; set a depth >= 1, or use the ZeroshotCLIP trainer.")
        super().check_cfg(cfg)

    def build_custom_clip(self, cfg, classnames, clip_model):
        return IVLPCLIP(cfg, classnames, clip_model)
