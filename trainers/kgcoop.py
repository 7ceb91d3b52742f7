"""KgCoOp: knowledge-guided context optimisation (Yao et al., CVPR 2023).

CoOp's generic text context (class token at the end) trained with an extra loss that keeps the
learned class text features close to the frozen CLIP's features of a hand-crafted prompt:
loss = CE + W * (1 - mean_c cos(t_c, t_c^hand)). Only the context vectors are learned; the
hand-crafted features are computed once per run, on first use (evaluation never needs them).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY

from .clip_prompting import ClassPrompts, PromptedCLIP, PromptTuningTrainer, init_context, template_text_features
from .clip_prompting.prompts import context_length
from datasets.templates import dataset_template

# The released hand-crafted prompts are the datasets' templates, except KgCoOp's own DTD prompt.
OWN_TEMPLATES = {"DescribableTextures": "a photo of a {}, a type of texture."}


def hand_crafted_template(dataset_name):
    return OWN_TEMPLATES.get(dataset_name) or dataset_template(dataset_name)


N_CTX = 4  # the default; another value set with a CTX_INIT phrase gets a note (context_length)


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN
    cfg.TRAINER.KGCOOP = CN()
    cfg.TRAINER.KGCOOP.N_CTX = N_CTX
    cfg.TRAINER.KGCOOP.CTX_INIT = "a photo of a"
    cfg.TRAINER.KGCOOP.W = 8.0  # weight of the knowledge-guided loss (the released scripts' value)
    cfg.TRAINER.KGCOOP.PREC = "fp32"


class KgCoOpPromptLearner(nn.Module):
    def __init__(self, c, classnames, text_encoder):
        super().__init__()
        n_ctx = context_length(c.N_CTX, c.CTX_INIT, text_encoder.tokenizer, "TRAINER.KGCOOP", N_CTX)
        ctx, prefix = init_context(text_encoder, n_ctx, c.CTX_INIT, owner="TRAINER.KGCOOP")
        print(f'Initial context: "{prefix}"')
        print(f"Number of context words (tokens): {n_ctx}")
        self.ctx = nn.Parameter(ctx)
        self.classes = ClassPrompts(text_encoder, classnames, prefix, n_ctx)


class KgCoOpCLIP(PromptedCLIP):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        self.prompt_learner = KgCoOpPromptLearner(cfg.TRAINER.KGCOOP, classnames, self.text_encoder)
        self.classnames = list(classnames)
        self.template = hand_crafted_template(cfg.DATASET.NAME)
        print(f"Hand-crafted prompt: {self.template}")
        self.register_buffer("hand_crafted", None, persistent=False)

    def prompts(self):
        return self.prompt_learner.classes.assemble(self.prompt_learner.ctx)

    def encode_text(self, prompts):
        return self.text_encoder(prompts, self.prompt_learner.classes.eot_index)

    def hand_crafted_text_features(self):
        """The frozen CLIP's normalised features (C, E) of the hand-crafted prompts, computed once."""
        if self.hand_crafted is None:
            self.hand_crafted = template_text_features(self.text_encoder, self.classnames, self.template)
        return self.hand_crafted


def knowledge_guided_distance(text_features, hand_crafted):
    """1 - the mean cosine similarity of matching rows (both L2-normalised), KgCoOp's L_kg."""
    return 1.0 - F.cosine_similarity(text_features, hand_crafted, dim=-1, eps=1e-7).mean()


@TRAINER_REGISTRY.register()
class KgCoOp(PromptTuningTrainer):
    cfg_node = "KGCOOP"
    model_name = "prompt_learner"  # the released checkpoint folder name
    learnable_attr = "prompt_learner"

    def build_custom_clip(self, cfg, classnames, clip_model):
        return KgCoOpCLIP(cfg, classnames, clip_model)

    def compute_loss(self, image, label):
        model = self.model
        image_features, text_features = model.features(image)
        logits = model.logits(image_features, text_features)
        with torch.autocast(self.device.type, enabled=False):
            hand_crafted = model.hand_crafted_text_features()
        distance = knowledge_guided_distance(text_features, hand_crafted)
        return F.cross_entropy(logits, label) + self.method_cfg.W * distance, logits
