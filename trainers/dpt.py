"""DPT: dual-modality prompt tuning with class-aware visual prompts (Xing et al., IEEE TMM 2023).

Three learnable parts, each with its own optimiser (registered as prompt_learner,
ctx_learner and extractor):
- CoOp text context (N_CTX generic vectors, class token at the end) -> unnormalised text
  features T (C, E);
- VPT-deep in DPT's own convention: before each block i < BOTTOMLIMIT-1, VPT_N_CTX tokens
  are appended (after ln_pre) and the block's outputs at those slots are dropped again;
- class-aware visual prompts (CAVPT) in blocks BOTTOMLIMIT-1 .. L-1: for each image, the
  top-K classes of zero-shot CLIP give K queries meta_net(T[k]); a single-head attention
  over the block's (detached) tokens plus KV_TOKENS learnable tokens turns them into K
  prompt tokens, appended for that block only. A per-layer classifier on the attention
  output adds the auxiliary loss.

Training: for the first PRETRAIN_EPOCHS epochs the loss also guides each half with CLIP's
general knowledge, CE(f0 . T) + CE(f . T_zs) + 0.1 CE(f . T) (f0: frozen image feature, T_zs:
hand-crafted text); afterwards CE(f . T). Both stages add ALPHA x CE of the layer logits at
the (image, layer, k) slots whose class k is the label. Inference: the logits of f . T.
"""
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY
from dassl.optim import build_lr_scheduler, build_optimizer

from datasets.templates import dataset_template

from .clip_prompting import ClassPrompts, PromptedCLIP, PromptTuningTrainer, init_context, template_text_features


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN  # as CoOp: the original dassl.config exports no CfgNode
    cfg.TRAINER.DPT = CN()
    cfg.TRAINER.DPT.N_CTX = 16            # CoOp text context (TRAINER.COOP.N_CTX in the original)
    cfg.TRAINER.DPT.CTX_INIT = ""
    cfg.TRAINER.DPT.VPT_N_CTX = 10        # TRAINER.VPT.N_CTX
    cfg.TRAINER.DPT.CPN = 10              # TRAINER.SELECTED_COVPT.CPN: class-aware prompts (top-K)
    cfg.TRAINER.DPT.BOTTOMLIMIT = 12      # TRAINER.TOPDOWN_SECOVPT.BOTTOMLIMIT: first CAVPT layer, 1-based
    cfg.TRAINER.DPT.KV_TOKENS = 10        # learnable key/value tokens per CAVPT layer (hard-coded originally)
    cfg.TRAINER.DPT.ALPHA = 1.0           # TRAINER.ALPHA: weight of the layer-wise loss
    cfg.TRAINER.DPT.PRETRAIN_EPOCHS = 30  # PRETRAIN.C: epochs of general-knowledge guidance
    cfg.TRAINER.DPT.TEXT_LR = 0.002       # the CoOp part's learning rate (warmup 1 epoch)
    cfg.TRAINER.DPT.PREC = "fp32"


def check_dpt_cfg(c, layers):
    def fail(msg):
        raise ValueError(f"TRAINER.DPT: {msg}")
    if not 1 <= c.BOTTOMLIMIT <= layers:
        fail(f"BOTTOMLIMIT is {c.BOTTOMLIMIT}; it is the first layer (1-based) with class-aware prompts, so use "
             f"1 to {layers} for this CLIP ({layers}: the last layer only).")
    for key in ("N_CTX", "CPN", "KV_TOKENS"):
        if getattr(c, key) < 1:
            fail(f"{key} is {getattr(c, key)}; it must be at least 1.")
    for key in ("VPT_N_CTX", "ALPHA", "PRETRAIN_EPOCHS"):
        if getattr(c, key) < 0:
            fail(f"{key} is {getattr(c, key)}; it must not be negative.")
    if c.TEXT_LR <= 0:
        fail(f"TEXT_LR is {c.TEXT_LR}; the CoOp part's learning rate must be positive.")


class TextContext(nn.Module):
    """CoOp's generic context with the class token at the end."""

    def __init__(self, c, classnames, text_encoder):
        super().__init__()
        ctx, prefix = init_context(text_encoder, c.N_CTX, c.CTX_INIT, owner="TRAINER.DPT")
        print(f'Initial context: "{prefix}"')
        print(f"Number of context words (tokens): {c.N_CTX}")
        self.ctx = nn.Parameter(ctx)
        self.classes = ClassPrompts(text_encoder, classnames, prefix, c.N_CTX)


class SingleHeadAttention(nn.Module):
    """softmax(W_q q . (W_k kv)^T / sqrt(d)) . kv, then W_v: the value map comes after the sum."""

    def __init__(self, width, head_dim=32):
        super().__init__()
        self.q = nn.Linear(width, head_dim, bias=False)
        self.k = nn.Linear(width, head_dim, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.scale = head_dim ** -0.5

    def forward(self, query, kv):  # (B, K, d), (B, L, d) -> (B, K, d)
        weights = torch.softmax(self.q(query) @ self.k(kv).transpose(1, 2) * self.scale, dim=-1)
        return self.v(weights @ kv)


class AuxiliaryClassifier(nn.Linear):
    """The per-layer classifier of the auxiliary loss (training only).

    Its size follows the class set; a checkpoint of another class set (base -> new,
    cross-dataset) keeps the current, unused head instead of failing on the shape.
    """

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "weight"
        if key in state_dict and state_dict[key].shape != self.weight.shape:
            state_dict[key] = self.weight.detach().clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ClassAwarePromptLayer(nn.Module):
    def __init__(self, embed_dim, width, num_classes, kv_tokens):
        super().__init__()
        self.meta_net = nn.Linear(embed_dim, width)
        self.attn = SingleHeadAttention(width)
        self.ln = nn.LayerNorm(width)
        self.ln_out = nn.LayerNorm(width)
        self.classifier = AuxiliaryClassifier(width, num_classes, bias=False)
        self.kv_ctx = nn.Parameter(nn.init.normal_(torch.empty(kv_tokens, width), std=0.02))

    def forward(self, x, class_features):
        """x (B, L, d) block input; class_features (B, K, E) -> prompts (B, K, d), logits (B, K, C)."""
        kv = torch.cat([x.detach(), self.kv_ctx.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
        query = self.meta_net(class_features.to(self.meta_net.weight.dtype))
        out = self.attn(query, kv.to(query.dtype))
        return self.ln_out(out + query), self.classifier(self.ln(out))


class ClassAwarePrompts(nn.Module):
    def __init__(self, layers, embed_dim, width, num_classes, kv_tokens):
        super().__init__()
        self.layers = nn.ModuleList(ClassAwarePromptLayer(embed_dim, width, num_classes, kv_tokens)
                                    for _ in range(layers))


class DualPromptHook:
    """Appends VPT tokens before the lower blocks and class-aware tokens before the upper ones;
    each block's outputs at the appended slots are dropped before the next block."""

    def __init__(self, image_encoder, vpt_ctx, class_aware, first_class_aware, class_features):
        self.encoder = image_encoder
        self.vpt_ctx, self.class_aware, self.first = vpt_ctx, class_aware, first_class_aware
        self.class_features = class_features
        self.appended = 0
        self.layer_logits = []

    def __call__(self, index, x):
        if self.appended:
            x = self.encoder.remove_prompts(x, self.appended)
        if index < self.first:
            tokens = self.vpt_ctx[index].to(x.dtype).expand(x.shape[0], -1, -1)
        else:
            tokens, logits = self.class_aware.layers[index - self.first](x, self.class_features)
            self.layer_logits.append(logits)
        self.appended = tokens.shape[1]
        return self.encoder.insert_prompts(x, tokens.to(x.dtype))


class DPTTextState(NamedTuple):
    """DPT's text state: the class-aware prompts need T unnormalised, the logits its normalised rows."""
    unnormalised: torch.Tensor  # (C, E)
    normalised: torch.Tensor    # (C, E)


class ClassAwarePass(NamedTuple):
    """What DPT's image pass gives: its features, the text state it used, and the loss's extras."""
    image: torch.Tensor         # (B, E) normalised features of the prompted image pass
    text_state: DPTTextState
    frozen: torch.Tensor        # (B, E) normalised features of frozen CLIP (no prompts)
    top_k: torch.Tensor         # (B, K) the classes zero-shot CLIP selected
    layer_logits: list          # (B, K, C) per class-aware layer, for the auxiliary loss


class DPTCLIP(PromptedCLIP):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        c = cfg.TRAINER.DPT
        self.image_encoder.require_vit("TRAINER.DPT", cfg.MODEL.BACKBONE.NAME)
        layers = self.image_encoder.num_layers
        check_dpt_cfg(c, layers)
        width, embed_dim = self.image_encoder.width, self.embed_dim
        self.first_class_aware = c.BOTTOMLIMIT - 1
        self.top_k = min(c.CPN, len(classnames))
        print(f"VPT: {c.VPT_N_CTX} tokens in blocks 1..{self.first_class_aware}; class-aware prompts: "
              f"{self.top_k} per image in blocks {c.BOTTOMLIMIT}..{layers}")
        self.prompt_learner = TextContext(c, classnames, self.text_encoder)
        self.ctx_learner = nn.Module()
        self.ctx_learner.ctx = nn.Parameter(
            nn.init.normal_(torch.empty(self.first_class_aware, c.VPT_N_CTX, width), std=0.02))
        self.extractor = ClassAwarePrompts(layers - self.first_class_aware, embed_dim, width, len(classnames),
                                           c.KV_TOKENS)
        template = dataset_template(cfg.DATASET.NAME)
        print(f'Zero-shot text for the class selection: "{template}"')
        self.register_buffer("zero_shot_text", template_text_features(self.text_encoder, classnames, template),
                             persistent=False)

    def unnormalised_text_features(self):
        """The CoOp class features T (C, E) before normalisation: the class-aware prompts are built from them."""
        classes = self.prompt_learner.classes
        return self.text_encoder(classes.assemble(self.prompt_learner.ctx), classes.eot_index).float()

    def text_features(self):
        """Normalised class text features (C, E)."""
        return self.text_state().normalised

    def text_state(self):
        """T and its normalised rows; image-independent, so evaluation computes it once."""
        unnormalised = self.unnormalised_text_features()
        return DPTTextState(unnormalised, F.normalize(unnormalised, dim=-1))

    @torch.no_grad()
    def select_classes(self, images):
        """Frozen zero-shot CLIP's normalised image features (B, E) and its top-K classes (B, K)."""
        frozen = F.normalize(self.image_encoder(images).float(), dim=-1)
        return frozen, (frozen @ self.zero_shot_text.t()).topk(self.top_k, dim=-1).indices

    def class_aware_pass(self, images, text_state=None):
        """The image pass with VPT and class-aware prompts, and what it yields besides the image features."""
        unnormalised = self.unnormalised_text_features() if text_state is None else text_state.unnormalised
        frozen, top_k = self.select_classes(images)
        hook = DualPromptHook(self.image_encoder, self.ctx_learner.ctx, self.extractor, self.first_class_aware,
                              unnormalised[top_k])
        image = F.normalize(self.image_encoder(images, hook=hook).float(), dim=-1)
        if text_state is None:
            # Normalised only now, after the prompts took their rows of T: in this order the
            # gradients reaching T add up as they always have (bitwise the same training).
            text_state = DPTTextState(unnormalised, F.normalize(unnormalised, dim=-1))
        return ClassAwarePass(image, text_state, frozen, top_k, hook.layer_logits)

    def features(self, images, text_state=None):
        result = self.class_aware_pass(images, text_state)
        return result.image, result.text_state

    def logits(self, image_features, text_state):
        return super().logits(image_features, text_state.normalised)

    def outputs(self, images):
        """Every logit DPT's training loss uses, for images (B, 3, H, W)."""
        result = self.class_aware_pass(images)
        return {
            "logits": self.logits(result.image, result.text_state),
            "frozen_image_logits": self.logits(result.frozen, result.text_state),
            "fixed_text_logits": super().logits(result.image, self.zero_shot_text),
            "layer_logits": torch.stack(result.layer_logits).float(),  # (layers, B, K, C)
            "top_k": result.top_k,
        }

def layer_loss(layer_logits, top_k, label):
    """CE of the layer logits at the slots whose selected class is the label (0 if none is)."""
    hit = (top_k == label[:, None]).unsqueeze(0).expand(layer_logits.shape[0], -1, -1)  # (layers, B, K)
    if not hit.any():
        return layer_logits.sum() * 0.0
    targets = label[None, :, None].expand_as(hit)[hit]
    return F.cross_entropy(layer_logits[hit], targets)


@TRAINER_REGISTRY.register()
class DPT(PromptTuningTrainer):
    cfg_node = "DPT"

    def build_custom_clip(self, cfg, classnames, clip_model):
        return DPTCLIP(cfg, classnames, clip_model)

    def register_learners(self):
        """One optimiser per part: the CoOp text at TEXT_LR (warmup 1 epoch), the rest at OPTIM.LR."""
        text_optim = self.cfg.OPTIM.clone()
        text_optim.defrost()
        text_optim.LR = self.cfg.TRAINER.DPT.TEXT_LR
        text_optim.WARMUP_EPOCH = 1
        # the first registered name's LR is the one the log lines show: OPTIM.LR's schedule
        for name, optim_cfg in (("extractor", self.cfg.OPTIM), ("ctx_learner", self.cfg.OPTIM),
                                ("prompt_learner", text_optim)):
            module = getattr(self.model, name)
            if sum(p.numel() for p in module.parameters() if p.requires_grad) == 0:
                continue  # no VPT tokens (BOTTOMLIMIT 1 or VPT_N_CTX 0)
            optim = build_optimizer(module, optim_cfg)
            self.register_model(name, module, optim, build_lr_scheduler(optim, optim_cfg))

    def compute_loss(self, image, label):
        out = self.model.outputs(image)
        logits = out["logits"]
        if self.epoch < self.cfg.TRAINER.DPT.PRETRAIN_EPOCHS:
            loss = (F.cross_entropy(out["frozen_image_logits"], label)
                    + F.cross_entropy(out["fixed_text_logits"], label) + 0.1 * F.cross_entropy(logits, label))
        else:
            loss = F.cross_entropy(logits, label)
        loss = loss + self.cfg.TRAINER.DPT.ALPHA * layer_loss(out["layer_logits"], out["top_k"], label)
        return loss, logits
