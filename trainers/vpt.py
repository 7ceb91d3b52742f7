"""VPT-deep: learnable visual prompts in every layer up to a depth, hand-crafted text.

The MaPLe repository's convention: n_v tokens appended after the patches (before ln_pre),
replaced by a fresh set before vision blocks 1..D_v-1 and carried forward past D_v. The class
text features of "a photo of a {class}." are computed once by the frozen text encoder.
PROMPT_DEPTH_VISION 0 is exactly zero-shot CLIP with that template.
"""
from dassl.engine import TRAINER_REGISTRY

from .clip_prompting import PromptedCLIP, PromptTuningTrainer, template_text_features
from .ivlp import DeepPrompts, check_prompt_depth

TEXT_TEMPLATE = "a photo of a {}."


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN  # as CoOp: the original dassl.config exports no CfgNode
    cfg.TRAINER.VPT = CN()
    cfg.TRAINER.VPT.N_CTX_VISION = 2
    cfg.TRAINER.VPT.PROMPT_DEPTH_VISION = 1
    cfg.TRAINER.VPT.PREC = "fp32"


class VPTCLIP(PromptedCLIP):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        c = cfg.TRAINER.VPT
        self.image_encoder.require_vit("TRAINER.VPT", cfg.MODEL.BACKBONE.NAME)
        check_prompt_depth("VPT", "PROMPT_DEPTH_VISION", c.PROMPT_DEPTH_VISION, "N_CTX_VISION", c.N_CTX_VISION,
                           self.image_encoder.num_layers)
        self.prompt_learner = None
        if c.PROMPT_DEPTH_VISION:
            self.prompt_learner = DeepPrompts(c.PROMPT_DEPTH_VISION, c.N_CTX_VISION, self.image_encoder.width)
        print(f"Visual prompts: {c.N_CTX_VISION} tokens, depth {c.PROMPT_DEPTH_VISION}; text: \"{TEXT_TEMPLATE}\"")
        # class-dependent and frozen: rebuilt for each class set, never saved
        self.register_buffer("fixed_text_features",
                             template_text_features(self.text_encoder, classnames, TEXT_TEMPLATE), persistent=False)

    def encode_text(self, prompts):
        return self.fixed_text_features

    def encode_image(self, images, prompts):
        visual = self.prompt_learner
        if visual is None:
            return self.image_encoder(images)
        return self.image_encoder(images, visual.ctx, hook=visual.hook(self.image_encoder.prompt_start(visual.length)))


@TRAINER_REGISTRY.register()
class VPT(PromptTuningTrainer):
    cfg_node = "VPT"
    model_name = "prompt_learner"  # the released checkpoint folder name
    learnable_attr = "prompt_learner"

    def check_cfg(self, cfg):
        if cfg.TRAINER.VPT.PROMPT_DEPTH_VISION == 0:
            raise ValueError("TRAINER.VPT: PROMPT_DEPTH_VISION is 0, so there is nothing to train; set it to "
                             ">= 1, or use the ZeroshotCLIP trainer for zero-shot evaluation.")
        super().check_cfg(cfg)

    def build_custom_clip(self, cfg, classnames, clip_model):
        return VPTCLIP(cfg, classnames, clip_model)
