"""MaPLe: multi-modal prompt learning (Khattak et al., CVPR 2023).

Deep text prompts T_0..T_{J-1} (n x d_t); the visual prompt of every layer is a function of
the text prompt of that layer, V_l = proj_l(T_l), through a separate Linear d_t -> d_v per
layer. The coupling is one-way (text -> vision); there are no independent visual prompts.
Text: T_0 right after SOS, T_l replaces those slots before blocks 1..J-1. Vision: V_0
appended after the patches, V_l replaces the last n tokens before blocks 1..J-1.
"""
import copy

import torch
import torch.nn as nn

from dassl.engine import TRAINER_REGISTRY

from .clip_prompting import ClassPrompts, DeepPromptedCLIP, PromptTuningTrainer, init_context
from .clip_prompting.released import rename_released_keys, stack_released_layers


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN  # as CoOp: the original dassl.config exports no CfgNode
    cfg.TRAINER.MAPLE = CN()
    cfg.TRAINER.MAPLE.N_CTX = 2
    cfg.TRAINER.MAPLE.CTX_INIT = "a photo of a"
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 9
    cfg.TRAINER.MAPLE.PREC = "fp32"


class MaPLePromptLearner(nn.Module):
    """``node``: the config node holding the MaPLe keys (CoPrompt reuses this learner)."""

    def __init__(self, cfg, classnames, text_encoder, image_encoder, node="MAPLE"):
        super().__init__()
        c = getattr(cfg.TRAINER, node)
        image_encoder.require_vit(f"TRAINER.{node}", cfg.MODEL.BACKBONE.NAME)
        layers = min(text_encoder.num_layers, image_encoder.num_layers)
        if not 1 <= c.PROMPT_DEPTH <= layers:
            raise ValueError(f"TRAINER.{node}: PROMPT_DEPTH is {c.PROMPT_DEPTH}, but this CLIP has {layers} layers "
                             f"per encoder; use 1 (shallow) to {layers}.")
        if c.N_CTX < 1:
            raise ValueError(f"TRAINER.{node}: N_CTX is {c.N_CTX}; it needs at least 1 prompt token.")
        n, depth = c.N_CTX, c.PROMPT_DEPTH
        d_t, d_v = text_encoder.width, image_encoder.width
        ctx, prefix = init_context(text_encoder, n, c.CTX_INIT, owner=f"TRAINER.{node}")
        print(f'Initial context: "{prefix}"')
        print(f"Number of MaPLe context words (tokens): {n}, prompt depth {depth}")
        self.n_ctx = n
        self.ctx = nn.Parameter(ctx)                       # T_0
        self.proj = nn.Linear(d_t, d_v)                    # V_0 = proj(T_0)
        self.compound_prompts_text = nn.Parameter(         # T_1..T_{J-1}
            nn.init.normal_(torch.empty(depth - 1, n, d_t), std=0.02))
        layer = nn.Linear(d_t, d_v)  # the deep couplings start as copies of one initialised layer
        self.compound_prompt_projections = nn.ModuleList(copy.deepcopy(layer) for _ in range(depth - 1))
        self.classes = ClassPrompts(text_encoder, classnames, prefix, n)

    def from_released_state(self, state_dict):
        """A released MaPLe checkpoint: the whole model, its deep text prompts one tensor per layer."""
        state_dict = rename_released_keys(state_dict, {"prompt_learner.": ""}, ("prompt_learner.",), "MaPLe's code")
        return stack_released_layers(state_dict, "compound_prompts_text")

    def forward(self):
        visual_deep = [proj(t) for proj, t in zip(self.compound_prompt_projections, self.compound_prompts_text)]
        return {"text": self.classes.assemble(self.ctx), "text_deep": self.compound_prompts_text,
                "visual": self.proj(self.ctx), "visual_deep": visual_deep}


class MaPLeCLIP(DeepPromptedCLIP):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        self.prompt_learner = MaPLePromptLearner(cfg, classnames, self.text_encoder, self.image_encoder)


@TRAINER_REGISTRY.register()
class MaPLe(PromptTuningTrainer):
    cfg_node = "MAPLE"
    model_name = "MultiModalPromptLearner"  # the released checkpoint folder name
    learnable_attr = "prompt_learner"
    reference_half = ("ctx", "proj")  # released: the deep prompts and their projections stay fp32

    def use_reference_numerics(self):
        super().use_reference_numerics()
        if self.precision != "fp16":
            print("Note: the released MaPLe runs only with PREC fp16 (its shallow projection is fp16 whatever "
                  "PREC says); this run has the released weights and forward, but no released run to match")

    def build_custom_clip(self, cfg, classnames, clip_model):
        return MaPLeCLIP(cfg, classnames, clip_model)
