"""CoCoOp: context conditioned on each image by a small meta-net (Zhou et al., CVPR 2022).

Every image shifts the context by meta_net(f_image), so each image has its own C class
prompts. The original encodes them one image at a time; here all B x C prompts of a
batch go through the text encoder in one call (``fast``), which computes the same logits.
"""
import torch
import torch.nn as nn

from dassl.engine import TRAINER_REGISTRY

from .clip_prompting import ClassPrompts, PromptedCLIP, PromptTuningTrainer, init_context
from .clip_prompting.released import rename_released_keys
from .clip_prompting.prompts import context_length

N_CTX = 16  # the default; another value set with a CTX_INIT phrase gets a note (context_length)


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN  # as CoOp: the original dassl.config exports no CfgNode
    cfg.TRAINER.COCOOP = CN()
    cfg.TRAINER.COCOOP.N_CTX = N_CTX
    cfg.TRAINER.COCOOP.CTX_INIT = ""
    cfg.TRAINER.COCOOP.PREC = "fp16"


class CoCoOpPromptLearner(nn.Module):
    def __init__(self, cfg, classnames, text_encoder, embed_dim):
        super().__init__()
        c = cfg.TRAINER.COCOOP
        # as in the released code (CoOp's rule): a CTX_INIT phrase decides the context length
        n_ctx = context_length(c.N_CTX, c.CTX_INIT, text_encoder.tokenizer, "TRAINER.COCOOP", N_CTX)
        ctx, prefix = init_context(text_encoder, n_ctx, c.CTX_INIT, owner="TRAINER.COCOOP")
        print(f'Initial context: "{prefix}"')
        print(f"Number of context words (tokens): {n_ctx}")
        self.ctx = nn.Parameter(ctx)
        self.meta_net = nn.Sequential(
            nn.Linear(embed_dim, embed_dim // 16), nn.ReLU(inplace=True),
            nn.Linear(embed_dim // 16, text_encoder.width))
        self.classes = ClassPrompts(text_encoder, classnames, prefix, n_ctx)

    def from_released_state(self, state_dict):
        """A released CoCoOp checkpoint: its meta-net's layers are named linear1/linear2."""
        return rename_released_keys(state_dict, {"meta_net.linear1.": "meta_net.0.",
                                                 "meta_net.linear2.": "meta_net.2."})

    def forward(self, image_features):
        """Per-image contexts (B, n, D): ctx shifted by the meta-net's bias for each image."""
        bias = self.meta_net(image_features.to(self.ctx.dtype))
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)


class CoCoOpCLIP(PromptedCLIP):
    text_depends_on_image = True

    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        self.prompt_learner = CoCoOpPromptLearner(cfg, classnames, self.text_encoder, self.embed_dim)
        self.fast = True  # one text-encoder call for the whole batch

    def class_text_features(self, ctx):
        """Normalised text features (B, C, E) for per-image contexts ctx (B, n, D)."""
        classes = self.prompt_learner.classes
        num_images, num_classes = ctx.shape[0], classes.token_prefix.shape[0]
        if not self.fast:
            return torch.stack([self.normalise(self.text_encoder(classes.assemble(c), classes.eot_index))
                                for c in ctx])
        prompts = torch.cat([
            classes.token_prefix.unsqueeze(0).expand(num_images, -1, -1, -1),
            ctx.to(classes.token_prefix.dtype).unsqueeze(1).expand(-1, num_classes, -1, -1),
            classes.token_suffix.unsqueeze(0).expand(num_images, -1, -1, -1),
        ], dim=2).flatten(0, 1)
        features = self.text_encoder(prompts, classes.eot_index.repeat(num_images))
        return self.normalise(features).view(num_images, num_classes, -1)

    def features(self, images, text_state=None):
        """Normalised image features (B, E) and each image's own class features (B, C, E) (no text
        state exists before the images: ``forward`` refuses one)."""
        image_features = self.normalise(self.image_encoder(images))
        return image_features, self.class_text_features(self.prompt_learner(image_features))


@TRAINER_REGISTRY.register()
class CoCoOp(PromptTuningTrainer):
    cfg_node = "COCOOP"
    model_name = "prompt_learner"
    learnable_attr = "prompt_learner"

    def build_custom_clip(self, cfg, classnames, clip_model):
        return CoCoOpCLIP(cfg, classnames, clip_model)
