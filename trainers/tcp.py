"""TCP: textual-based class-aware prompt tuning (Yao et al., CVPR 2024).

KgCoOp's learnable text context and knowledge-guided loss, plus class-aware tokens. A Textual
Knowledge Embedding (TKE), the bottleneck MLP
    embed_dim -> embed_dim / TKE_REDUCTION (QuickGELU) -> N_CTX x text width,
maps the frozen CLIP's hand-crafted text feature of each class (its dataset template, computed
once, without gradients) to N_CTX tokens of that class. The class prompt is
"{context} {tail}" with the N_CTX learnable context tokens after the start token; before text
block LAYER (counted from 0: 8 as released, i.e. after the first 8 blocks) each class's tokens
replace the context rows of its sequence, so the shared context shapes the first LAYER blocks
and the class-aware tokens the rest.

loss = CE + W * (1 - mean_c cos(t_c, t_c^hand)), with t_c^hand the same hand-crafted features
the TKE reads. The TKE maps any class's text feature, so on new classes the model is rebuilt for
their names and generates their tokens from their own hand-crafted features (as released).

As released: the context starts random, N(0, 0.02) (the released config's CTX_INIT is False);
the prompt tail is the dataset's ("{context} {}, a type of pet.", "{context} person doing {}."
on UCF101; PROMPT_TAIL "released"); the hand-crafted templates are TCP's own (they differ from
CoOp's on FGVCAircraft, DTD and Food101); and Adam runs with eps 1e-3 (ADAM_EPS; the released
README edits Dassl's optimiser so, against NaN losses with fp16 learnables; torch's default is 1e-8).
The released code's loss weight is a fixed 8.0 (W here); its TRAINER.COOP.W reaches the text
encoder but is overridden there by a fixed 1.0, so the tokens replace the context rows outright.
Every class prompt ends with "." here, so StanfordCars' released tail, which has none, gets one.
"""
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY

from .clip_prompting import (ClassPrompts, PromptedCLIP, PromptTuningTrainer, init_context, splice,
                             template_text_features)
from .kgcoop import knowledge_guided_distance
from .mudpt import QuickGELU
from datasets.templates import dataset_template

# TCP's hand-crafted prompts (the TKE's input and the loss's target): the datasets' templates except these.
OWN_TEMPLATES = {
    "FGVCAircraft": "a photo of an aircraft {}.",
    "DescribableTextures": "a photo of a {}, a type of texture.",
    "Food101": "a photo of a {}, a type of food.",
}
# What follows the learnable context in the released class prompts ("{}": the class name); "{}." elsewhere.
RELEASED_TAILS = {
    "OxfordPets": "{}, a type of pet.",
    "OxfordFlowers": "{}, a type of flower.",
    "FGVCAircraft": "{}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "StanfordCars": "{}, a type of car",  # sic: no final period (the prompt gets one here)
    "Food101": "{}, a type of food.",
    "UCF101": "person doing {}.",  # the context replaces "a photo of a" of "a photo of a person doing {}."
}


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN
    cfg.TRAINER.TCP = CN()
    cfg.TRAINER.TCP.N_CTX = 4           # context tokens, and class-aware tokens that replace them
    cfg.TRAINER.TCP.CTX_INIT = ""       # released: random context
    cfg.TRAINER.TCP.LAYER = 8           # the class-aware tokens enter before text block LAYER (from 0)
    cfg.TRAINER.TCP.TKE_REDUCTION = 4   # TKE hidden width = embed_dim / TKE_REDUCTION (128 on ViT-B/16)
    cfg.TRAINER.TCP.W = 8.0             # weight of the knowledge-guided loss (fixed to 8.0 in the released code)
    cfg.TRAINER.TCP.PROMPT_TAIL = "released"  # or the text after the context, "{}" for the class name
    cfg.TRAINER.TCP.ADAM_EPS = 1e-3     # the released README's Adam eps (Adam-family optimisers only)
    cfg.TRAINER.TCP.PREC = "fp32"


def hand_crafted_template(dataset_name):
    return OWN_TEMPLATES.get(dataset_name) or dataset_template(dataset_name)


def prompt_tail(c, dataset_name):
    return RELEASED_TAILS.get(dataset_name, "{}.") if c.PROMPT_TAIL == "released" else c.PROMPT_TAIL


def check_tcp_cfg(c):
    """The keys that need no model; the layer is checked against the text tower (``check_tcp_layer``)."""
    def fail(msg):
        raise ValueError(f"TRAINER.TCP: {msg}")
    if c.N_CTX < 1:
        fail(f"N_CTX is {c.N_CTX}; TCP needs at least one context token (the class-aware tokens take their rows).")
    if c.TKE_REDUCTION < 1:
        fail(f"TKE_REDUCTION is {c.TKE_REDUCTION}; the TKE's hidden width is embed_dim / TKE_REDUCTION, so use a "
             "whole number >= 1 (4 as released).")
    if c.W < 0:
        fail(f"W is {c.W}; the weight of the knowledge-guided loss must be >= 0 (8.0 as released).")
    if not c.ADAM_EPS > 0:
        fail(f"ADAM_EPS is {c.ADAM_EPS}; Adam's eps must be positive (1e-3 as released, 1e-8 torch's default).")
    if c.PROMPT_TAIL != "released" and c.PROMPT_TAIL.count("{}") != 1:
        fail(f'PROMPT_TAIL is "{c.PROMPT_TAIL}"; use "released" (the dataset\'s released prompt) or a text '
             'with one "{}" for the class name, e.g. "{}." or "{}, a type of pet."')


def check_tcp_layer(c, layers):
    if not 1 <= c.LAYER < layers:
        raise ValueError(f"TRAINER.TCP: LAYER is {c.LAYER}; the class-aware tokens enter before text block LAYER "
                         f"(counted from 0), which must be 1..{layers - 1} for this CLIP's {layers} text blocks "
                         "(block 0 would overwrite the learned context before it is used; 8 as released).")


class ClassTokenHook:
    """Before text block ``layer``, overwrites the ``n`` context rows from ``start`` of each class's
    sequence with that class's tokens (C, n, D); a before-block hook of the shared text forward."""

    def __init__(self, tokens, layer, start):
        self.tokens, self.layer, self.start = tokens, layer, start

    def __call__(self, index, x):
        return splice(x, self.tokens, self.start) if index == self.layer else x

    def rows(self, selection):
        """The hook for a chunk of the classes (the chunked text pass)."""
        return ClassTokenHook(self.tokens[selection], self.layer, self.start)


class TCPPromptLearner(nn.Module):
    """The learnable context ``ctx`` and the TKE ``meta_net`` (the released names), and the class prompts."""

    def __init__(self, c, classnames, text_encoder, embed_dim, tail):
        super().__init__()
        n_ctx, width = c.N_CTX, text_encoder.width
        ctx, prefix = init_context(text_encoder, n_ctx, c.CTX_INIT, owner="TRAINER.TCP")
        print(f'Initial context: "{prefix}"')
        print(f"Number of context words (tokens): {n_ctx}")
        self.ctx = nn.Parameter(ctx)
        hidden = embed_dim // c.TKE_REDUCTION
        if hidden < 1:
            raise ValueError(f"TRAINER.TCP: TKE_REDUCTION {c.TKE_REDUCTION} leaves the TKE no hidden unit "
                             f"(embed_dim {embed_dim}); use at most {embed_dim}.")
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(embed_dim, hidden)), ("gelu", QuickGELU()),
            ("linear2", nn.Linear(hidden, n_ctx * width))]))
        # ClassPrompts ends every prompt with "."; the tail is given without its own
        texts = [tail.format(name.replace("_", " ")).removesuffix(".") for name in classnames]
        self.classes = ClassPrompts(text_encoder, texts, prefix, n_ctx)
        print(f'Class prompts: "{prefix} {texts[0]}." ...')
        self.n_ctx, self.width = n_ctx, width

    def class_tokens(self, class_features):
        """The TKE's tokens (C, N_CTX, width) from the classes' hand-crafted text features (C, E)."""
        tokens = self.meta_net(class_features.to(self.ctx.dtype))
        return tokens.reshape(tokens.shape[0], self.n_ctx, self.width)


class TCPCLIP(PromptedCLIP):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        c = cfg.TRAINER.TCP
        check_tcp_cfg(c)
        check_tcp_layer(c, self.text_encoder.num_layers)
        self.layer = c.LAYER
        tail = prompt_tail(c, cfg.DATASET.NAME)
        self.prompt_learner = TCPPromptLearner(c, classnames, self.text_encoder, self.embed_dim, tail)
        self.classnames = list(classnames)
        self.template = hand_crafted_template(cfg.DATASET.NAME)
        print(f"Hand-crafted prompt: {self.template}")
        print(f"Class-aware tokens: {c.N_CTX} per class, before text block {c.LAYER}")
        self.register_buffer("hand_crafted", None, persistent=False)

    def hand_crafted_text_features(self):
        """The frozen CLIP's normalised features (C, E) of the hand-crafted prompts, computed once
        (in fp32 outside autocast: they are the TKE's input and the loss's fixed target)."""
        if self.hand_crafted is None:
            device = self.logit_scale.device.type
            with torch.autocast("cuda" if device == "cuda" else "cpu", enabled=False):  # ("meta" has none)
                self.hand_crafted = template_text_features(self.text_encoder, self.classnames, self.template)
        return self.hand_crafted

    def prompts(self):
        learner = self.prompt_learner
        return {"text": learner.classes.assemble(learner.ctx),
                "class_tokens": learner.class_tokens(self.hand_crafted_text_features())}

    def encode_text(self, prompts):
        hook = ClassTokenHook(prompts["class_tokens"], self.layer, self.text_encoder.prompt_start)
        return self.text_encoder(prompts["text"], self.prompt_learner.classes.eot_index, hook=hook)


@TRAINER_REGISTRY.register()
class TCP(PromptTuningTrainer):
    cfg_node = "TCP"
    model_name = "prompt_learner"  # the released checkpoint folder name
    learnable_attr = "prompt_learner"

    def check_cfg(self, cfg):
        check_tcp_cfg(cfg.TRAINER.TCP)
        super().check_cfg(cfg)

    def build_custom_clip(self, cfg, classnames, clip_model):
        return TCPCLIP(cfg, classnames, clip_model)

    def compute_loss(self, image, label):
        model = self.model
        image_features, text_features = model.features(image)
        logits = model.logits(image_features, text_features)
        distance = knowledge_guided_distance(text_features, model.hand_crafted_text_features())
        return F.cross_entropy(logits, label) + self.method_cfg.W * distance, logits
