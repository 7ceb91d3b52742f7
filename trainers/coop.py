"""CoOp: learnable text context shared by (or specific to) the classes (Zhou et al., IJCV 2022)."""
import torch
import torch.nn as nn

from dassl.engine import TRAINER_REGISTRY

from .clip_prompting import ClassPrompts, PromptedCLIP, PromptTuningTrainer, init_context
from .clip_prompting.prompts import context_length

POSITIONS = ("end", "middle", "front")
N_CTX = 16  # the default; another value set with a CTX_INIT phrase gets a note (context_length)


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN  # as CoOp: the original dassl.config exports no CfgNode
    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = N_CTX
    cfg.TRAINER.COOP.CSC = False
    cfg.TRAINER.COOP.CTX_INIT = ""
    cfg.TRAINER.COOP.PREC = "fp16"
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"


class CoOpPromptLearner(nn.Module):
    def __init__(self, cfg, classnames, text_encoder):
        super().__init__()
        c = cfg.TRAINER.COOP
        if c.CLASS_TOKEN_POSITION not in POSITIONS:
            raise ValueError(f'TRAINER.COOP.CLASS_TOKEN_POSITION is "{c.CLASS_TOKEN_POSITION}"; '
                             f"use one of {', '.join(POSITIONS)}.")
        n_ctx = context_length(c.N_CTX, c.CTX_INIT, text_encoder.tokenizer, "TRAINER.COOP", N_CTX)
        ctx, prefix = init_context(text_encoder, n_ctx, c.CTX_INIT, owner="TRAINER.COOP")
        if c.CSC:
            print("Initializing class-specific contexts")
            ctx = ctx.unsqueeze(0).repeat(len(classnames), 1, 1)
            if not c.CTX_INIT:
                nn.init.normal_(ctx, std=0.02)
        else:
            print("Initializing a generic context")
        print(f'Initial context: "{prefix}"')
        print(f"Number of context words (tokens): {n_ctx}")
        self.ctx = nn.Parameter(ctx)
        self.classes = ClassPrompts(text_encoder, classnames, prefix, n_ctx)
        self.position = c.CLASS_TOKEN_POSITION

    def forward(self):
        """Prompt embeddings (C, 77, D) in the configured class-token layout."""
        if self.position == "end":
            return self.classes.assemble(self.ctx)
        cls = self.classes
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.unsqueeze(0).expand(len(cls.name_lens), -1, -1)
        ctx = ctx.to(cls.token_prefix.dtype)
        half = cls.n_ctx // 2
        rows = []
        for i, name_len in enumerate(cls.name_lens):
            prefix, suffix = cls.token_prefix[i:i + 1], cls.token_suffix[i:i + 1]
            name, rest = suffix[:, :name_len], suffix[:, name_len:]
            c_i = ctx[i:i + 1]
            if self.position == "middle":
                parts = [prefix, c_i[:, :half], name, c_i[:, half:], rest]
            else:
                parts = [prefix, name, c_i, rest]
            rows.append(torch.cat(parts, dim=1))
        return torch.cat(rows, dim=0)


class CoOpCLIP(PromptedCLIP):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        self.prompt_learner = CoOpPromptLearner(cfg, classnames, self.text_encoder)

    def prompts(self):
        return self.prompt_learner()

    def encode_text(self, prompts):
        return self.text_encoder(prompts, self.prompt_learner.classes.eot_index)


@TRAINER_REGISTRY.register()
class CoOp(PromptTuningTrainer):
    cfg_node = "COOP"
    model_name = "prompt_learner"
    learnable_attr = "prompt_learner"

    def build_custom_clip(self, cfg, classnames, clip_model):
        return CoOpCLIP(cfg, classnames, clip_model)
