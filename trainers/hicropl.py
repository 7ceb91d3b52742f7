"""HiCroPL: hierarchical cross-modal prompt learning (Zheng et al., ICCV 2025).

Deep prompts in both encoders, n tokens per layer in layers 1..D (PROMPT_DEPTH): text prompts
T_0..T_{D-1} (T_0 right after SOS, T_l replacing those slots before text block l) and visual
prompts V_0..V_{D-1} (V_0 appended after the patches, before ln_pre; V_l replacing them before
vision block l). Knowledge flows between the two sets of prompts, once per forward, before either
encoder runs (the mapping reads the prompt vectors, not the encoders' hidden states):
- layers 1..k (k = CROSS_LAYER), text -> vision: a layer-specific knowledge proxy (LKP) pools
  each T_l (l < k) into one token, its learnable proxy token attending over T_l
  (p = LN2(q + MHA(LN1 q, LN1 T_l, LN1 T_l))); the mapper then refines all k visual prompt sets
  at once with cross-attention over the k proxies of every such layer (multi-scale):
  V = q + MHA(LN1 q, LN1 W_k p, LN1 W_v p) + FFN(LN2 .), q = W_q [V_0; ..; V_{k-1}];
- layers k+1..D, vision -> text: the same with the roles swapped, refining T_k..T_{D-1} from
  proxies of V_k..V_{D-1}.
T_0..T_{k-1} and V_k..V_{D-1} enter the encoders as they are.

Features are fused with the frozen CLIP's: image = norm(norm(f) + f0), f0 the frozen image
feature (the image encoder without prompts), and text = norm(norm(t) + d), d the class
description ensemble (each description encoded by the frozen text encoder, normalised, averaged,
normalised; computed once per class set). Training and evaluation score with the fused features.
loss = CE + LAMBD * ((1 - mean cos(text, d)) + (1 - mean cos(image, f0))).

MAPPER_GRADIENT True (default, the paper): the mapped prompts are functions of the learnable
tensors, so the mappers, LKPs and proxy tokens learn. False: as released, each training forward
writes the mapper outputs into the prompt tensors themselves (``.data.copy_``): no gradient
reaches the mappers, LKPs or proxy tokens (they stay at their initial values), and the prompts are
mapped again at every step. The released code also rewrites them at every test batch, so its
accuracy depends on the number of batches; here evaluation maps the stored prompts once, what
the released code's first test batch sees.

As released, every layer's visual prompts start from one N(0, 0.02) draw, the proxy tokens of a
direction from one N(0, 1) draw, and the LKPs of a direction as copies of one initialised module.
The released configs set Adam's eps to 1e-3 (OPTIM.EPS in the released engine): ADAM_EPS here.
"""
import contextlib
import copy
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY

from datasets.descriptions import class_descriptions

from .clip_prompting import ClassPrompts, DeepPromptedCLIP, PromptTuningTrainer, init_context
from .mudpt import QuickGELU

HEADS = 8  # attention heads of the mappers and LKPs, fixed in the released code


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN  # as CoOp: the original dassl.config exports no CfgNode
    cfg.TRAINER.HICROPL = CN()
    cfg.TRAINER.HICROPL.N_CTX = 2             # prompt tokens per layer, both encoders
    cfg.TRAINER.HICROPL.CTX_INIT = "a photo of a"
    cfg.TRAINER.HICROPL.PROMPT_DEPTH = 9      # layers with prompts, both encoders
    cfg.TRAINER.HICROPL.CROSS_LAYER = 6       # k: text -> vision in layers 1..k, vision -> text after
    cfg.TRAINER.HICROPL.LAMBD = 10.0          # weight of the two distances to the frozen features
    cfg.TRAINER.HICROPL.MAPPER_GRADIENT = True  # False: the released in-place mapping (no mapper gradient)
    cfg.TRAINER.HICROPL.ADAM_EPS = 1e-8       # Adam's eps (released configs: 1e-3)
    cfg.TRAINER.HICROPL.TEACHER_NAME = ""     # the frozen image features' CLIP: empty = the backbone itself
    cfg.TRAINER.HICROPL.PREC = "fp32"


def check_hicropl_cfg(c, layers, widths, backbone):
    def fail(msg):
        raise ValueError(f"TRAINER.HICROPL: {msg}")
    if not 2 <= c.PROMPT_DEPTH <= layers:
        fail(f"PROMPT_DEPTH is {c.PROMPT_DEPTH}, but this CLIP has {layers} layers per encoder; use 2 to {layers} "
             "(knowledge flows both ways, so at least one layer each way).")
    if not 1 <= c.CROSS_LAYER < c.PROMPT_DEPTH:
        fail(f"CROSS_LAYER is {c.CROSS_LAYER} with PROMPT_DEPTH {c.PROMPT_DEPTH}; use 1 to {c.PROMPT_DEPTH - 1}: "
             "text -> vision runs in layers 1..CROSS_LAYER and vision -> text in the layers after it.")
    if c.N_CTX < 1:
        fail(f"N_CTX is {c.N_CTX}; HiCroPL needs at least 1 prompt token per layer.")
    if c.LAMBD < 0:
        fail(f"LAMBD is {c.LAMBD}; the weight of the distances to the frozen features must not be negative.")
    if not c.ADAM_EPS > 0:
        fail(f"ADAM_EPS is {c.ADAM_EPS}; Adam's eps must be positive (released configs: 1e-3).")
    if c.TEACHER_NAME and c.TEACHER_NAME != backbone:
        fail(f"TEACHER_NAME is {c.TEACHER_NAME}, but the frozen image features come from this run's own CLIP "
             f"(MODEL.BACKBONE.NAME {backbone}): their features are added to the prompted ones, so both must be "
             "the same model. Leave TEACHER_NAME empty or set it to the backbone's name.")
    for name, width in widths.items():
        if width % HEADS:
            fail(f"the {name} encoder's width {width} is not divisible by the {HEADS} attention heads of the "
                 "knowledge mappers; use a CLIP whose widths are multiples of 8.")


class KnowledgeProxy(nn.Module):
    """LKP: a learnable token attends over one layer's prompts (n, d) -> one proxy token (1, d)."""

    def __init__(self, width):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, HEADS)
        self.ln_1 = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, token, prompts):
        t, p = self.ln_1(token), self.ln_1(prompts)
        return self.ln_2(token + self.attn(t, p, p, need_weights=False)[0])


class KnowledgeMapper(nn.Module):
    """Cross-attention of one modality's prompts (queries, width d_q) over the other's proxy
    tokens (width d_kv), with a feed-forward block: the refined prompts (rows, d_q)."""

    def __init__(self, width, source_width):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, HEADS)
        self.linear_q = nn.Linear(width, width)
        self.linear_k = nn.Linear(source_width, width)
        self.linear_v = nn.Linear(source_width, width)
        self.ln_1 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, queries, proxies):
        q = self.linear_q(queries)
        k, v = self.ln_1(self.linear_k(proxies)), self.ln_1(self.linear_v(proxies))
        q = q + self.attn(self.ln_1(q), k, v, need_weights=False)[0]
        return q + self.ffn(self.ln_2(q))


def map_prompts(mapper, proxies, tokens, prompts, sources):
    """Refine ``prompts`` (layers x (n, d)) with ``mapper`` over one proxy token per ``sources``
    layer (pooled by ``proxies`` from ``tokens``): layers x (n, d)."""
    pooled = torch.cat([proxy(token, source) for proxy, token, source in zip(proxies, tokens, sources)])
    refined = mapper(torch.cat(list(prompts)), pooled)
    return list(refined.view(len(prompts), -1, refined.shape[-1]).unbind(0))


def layer_range(first, last):
    return f"layer {first}" if first == last else f"layers {first}-{last}"


class CrossModalPromptLearner(nn.Module):
    """All learnable tensors of HiCroPL (the released names: a released checkpoint's tensors load)."""

    def __init__(self, cfg, classnames, text_encoder, image_encoder):
        super().__init__()
        c = cfg.TRAINER.HICROPL
        image_encoder.require_vit("TRAINER.HICROPL", cfg.MODEL.BACKBONE.NAME)
        d_t, d_v = text_encoder.width, image_encoder.width
        check_hicropl_cfg(c, min(text_encoder.num_layers, image_encoder.num_layers), {"text": d_t, "image": d_v},
                          cfg.MODEL.BACKBONE.NAME)
        n, depth, k = c.N_CTX, c.PROMPT_DEPTH, c.CROSS_LAYER
        self.n_ctx, self.depth, self.cross_layer = n, depth, k
        self.mapper_gradient = bool(c.MAPPER_GRADIENT)
        # initialised in the released order, so a seed draws the released initial values
        ctx, prefix = init_context(text_encoder, n, c.CTX_INIT, owner="TRAINER.HICROPL")
        print(f'Initial text context: "{prefix}"')
        print(f"HiCroPL: {n} prompt tokens per layer in layers 1-{depth}; text -> vision in {layer_range(1, k)}, "
              f"vision -> text in {layer_range(k + 1, depth)}; mapper gradient "
              f"{'on (paper)' if self.mapper_gradient else 'off (released in-place mapping)'}")
        deep = [nn.init.normal_(torch.empty(n, d_t), std=0.02) for _ in range(depth - 1)]
        self.cross_prompts_text = nn.ParameterList([nn.Parameter(ctx)] + [nn.Parameter(t) for t in deep])
        visual = nn.init.normal_(torch.empty(n, d_v), std=0.02)
        self.cross_prompts_visual = nn.ParameterList([nn.Parameter(visual.clone()) for _ in range(depth)])
        self.text2visual_net = KnowledgeMapper(d_v, d_t)
        self.visual2text_net = KnowledgeMapper(d_t, d_v)
        pool_text, pool_visual = KnowledgeProxy(d_t), KnowledgeProxy(d_v)
        self.attn_pooling_text_nets = nn.ModuleList(copy.deepcopy(pool_text) for _ in range(k))
        self.attn_pooling_visual_nets = nn.ModuleList(copy.deepcopy(pool_visual) for _ in range(depth - k))
        token_text, token_visual = torch.randn(1, d_t), torch.randn(1, d_v)
        self.text_proxy_token = nn.ParameterList([nn.Parameter(token_text.clone()) for _ in range(k)])
        self.visual_proxy_token = nn.ParameterList([nn.Parameter(token_visual.clone()) for _ in range(depth - k)])
        self.classes = ClassPrompts(text_encoder, classnames, prefix, n)

    @property
    def ctx(self):
        """The shallow text prompt T_0 (after SOS)."""
        return self.cross_prompts_text[0]

    def mapped(self):
        """(text prompts, visual prompts), one (n, d) per layer, after both knowledge flows."""
        k = self.cross_layer
        text, visual = list(self.cross_prompts_text), list(self.cross_prompts_visual)
        visual[:k] = map_prompts(self.text2visual_net, self.attn_pooling_text_nets, self.text_proxy_token,
                                 visual[:k], text[:k])
        text[k:] = map_prompts(self.visual2text_net, self.attn_pooling_visual_nets, self.visual_proxy_token,
                               text[k:], visual[k:])
        return text, visual

    @torch.no_grad()
    def map_in_place(self):
        """The released step: the mapped prompts overwrite the prompt tensors themselves."""
        text, visual = self.mapped()
        k = self.cross_layer
        for param, value in zip(list(self.cross_prompts_visual)[:k], visual[:k]):
            param.copy_(value)
        for param, value in zip(list(self.cross_prompts_text)[k:], text[k:]):
            param.copy_(value)

    def forward(self):
        if not self.mapper_gradient and self.training:
            self.map_in_place()
            text, visual = list(self.cross_prompts_text), list(self.cross_prompts_visual)
        else:
            text, visual = self.mapped()
        return {"text": self.classes.assemble(text[0]), "text_deep": text[1:],
                "visual": visual[0], "visual_deep": visual[1:]}


@torch.no_grad()
def encode_descriptions(text_encoder, sentences, source=""):
    """Per class: its descriptions' frozen text features, each normalised, averaged, normalised (C, E)."""
    features = []
    for lines in sentences:
        try:
            ids = text_encoder.tokenize(lines)
        except RuntimeError as exc:  # a sentence longer than the text encoder's context
            raise ValueError(f"A class description in {source or 'DATASET.DESCRIPTIONS'} does not fit the text "
                             f"encoder ({exc}); shorten it to fit the context length.") from exc
        encoded = F.normalize(text_encoder.encode_ids(ids).float(), dim=-1)
        features.append(F.normalize(encoded.mean(dim=0), dim=-1))
    return torch.stack(features)


class HiCroPLCLIP(DeepPromptedCLIP):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        self.prompt_learner = CrossModalPromptLearner(cfg, classnames, self.text_encoder, self.image_encoder)
        self.descriptions = class_descriptions(cfg, classnames)
        counts = [len(s) for s in self.descriptions.sentences]
        print(f"Class descriptions: {sum(counts)} sentences for {len(counts)} classes ({self.descriptions.source})")
        self.register_buffer("description_ensemble", None, persistent=False)

    def description_features(self):
        """The frozen CLIP's description ensemble (C, E) of the classes, computed once (in fp32 under amp)."""
        if self.description_ensemble is None:
            device = self.logit_scale.device.type
            full = torch.autocast(device, enabled=False) if device in ("cuda", "cpu") else contextlib.nullcontext()
            with full:
                self.description_ensemble = encode_descriptions(self.text_encoder, self.descriptions.sentences,
                                                                 self.descriptions.source)
        return self.description_ensemble

    @torch.no_grad()
    def frozen_image_features(self, images):
        """The frozen CLIP's normalised image features: the image encoder without prompts."""
        return F.normalize(self.image_encoder(images).float(), dim=-1)

    def fused_text(self, prompts):
        text = F.normalize(self.encode_text(prompts).float(), dim=-1)
        return F.normalize(text + self.description_features(), dim=-1)

    def text_features(self):
        """The fused class features (C, E) the images are scored with."""
        return self.fused_text(self.prompts())

    def fused_features(self, images, text_state=None):
        """(fused image features (B, E), fused text features or the given text state, frozen image features)."""
        prompts = self.prompts()
        frozen = self.frozen_image_features(images)
        image = F.normalize(F.normalize(self.encode_image(images, prompts).float(), dim=-1) + frozen, dim=-1)
        return image, self.fused_text(prompts) if text_state is None else text_state, frozen

    def features(self, images, text_state=None):
        image, text, _ = self.fused_features(images, text_state)
        return image, text


def hicropl_loss(lambd, logits, label, text, descriptions, image, frozen_image):
    """CE plus LAMBD times the cosine distances of the fused features to the frozen ones."""
    def distance(a, b):
        return 1.0 - F.cosine_similarity(a, b, dim=-1, eps=1e-7).mean()
    distances = distance(text, descriptions) + distance(image, frozen_image)
    return F.cross_entropy(logits.float(), label) + lambd * distances


@TRAINER_REGISTRY.register()
class HiCroPL(PromptTuningTrainer):
    cfg_node = "HICROPL"
    model_name = "VLPromptLearner"  # the released checkpoint folder name
    learnable_attr = "prompt_learner"

    def build_custom_clip(self, cfg, classnames, clip_model):
        return HiCroPLCLIP(cfg, classnames, clip_model)

    def compute_loss(self, image, label):
        model = self.model
        image_features, text_features, frozen_image = model.fused_features(image)
        logits = model.logits(image_features, text_features)
        loss = hicropl_loss(self.method_cfg.LAMBD, logits, label, text_features, model.description_features(),
                            image_features, frozen_image)
        return loss, logits
