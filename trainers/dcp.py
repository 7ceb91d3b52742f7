"""DCP: deeply coupled cross-modal prompt learning (CMPA; ACL Findings 2023, arXiv 2305.17903).

Text prompts (n x d_t, right after SOS) and visual prompts (n x d_v, appended after the
patches) enter at layer 0. Before each block i = 1..PROMPT_DEPTH, a Cross-Modal Prompt
Attention refines the prompt slots of both encoders from their previous outputs:
    v' = v + MHA_v(q = LN1_v(proj_t2v(t)), k = v = LN1_v(v));  v' += MLP_v(LN2_v(v'))
and symmetrically t' from t with the query from v. One attention is shared by all layers
(PS True) or each refined block has its own.

The project's default is the method as described: t' replaces the text prompt slots, and
each image refines its own prompts (FUSING "none"), so a prediction never depends on the
other images in the batch. Each image then has its own text prompts, so the text encoder
runs over batch x classes sequences (like CoCoOp).

Released behaviour, as options: UPDATE_TEXT False drops t' (the released encoder never
writes it back, so the text half of the attention gets no gradient and is not built
here), and FUSING "mean" / "first" / "max" collapses the prompts over the batch before the
attention, so the prompts are shared by (and depend on) the whole batch.

The text prompt slots never see the class tokens (causal mask), so their states are
tracked on one short [SOS, prompts] sequence in lockstep with the image encoder; the
full text pass then writes the recorded t' into its slots, which is exact.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY

from .clip_prompting import ClassPrompts, PromptedCLIP, PromptTuningTrainer, deep_prompt_hook, init_context, splice

FUSINGS = ("none", "mean", "first", "max")


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN  # as CoOp: the original dassl.config exports no CfgNode
    cfg.TRAINER.DCP = CN()
    cfg.TRAINER.DCP.N_CTX = 2
    cfg.TRAINER.DCP.CTX_INIT = "a photo of a"
    cfg.TRAINER.DCP.PROMPT_DEPTH = 9   # blocks 1..PROMPT_DEPTH get refined prompts; 0: none
    cfg.TRAINER.DCP.PREC = "fp32"
    cfg.TRAINER.DCP.PS = True          # one attention shared by all layers
    cfg.TRAINER.DCP.FUSING = "none"    # released: "mean" (prompts averaged over the batch)
    cfg.TRAINER.DCP.UPDATE_TEXT = True  # released: False (the text update is lost)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class PromptUpdate(nn.Module):
    """Refines one modality's prompts (N, n, width) with queries from the other's (N, n, other)."""

    def __init__(self, width, other_width):
        super().__init__()
        self.proj = nn.Linear(other_width, width)
        self.attn = nn.MultiheadAttention(width, width // 64, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)  # normalises the query and the keys alike
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), QuickGELU(), nn.Linear(4 * width, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, own, other):
        query, keys = self.ln_1(self.proj(other)), self.ln_1(own)
        x = own + self.attn(query, keys, keys, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class CrossModalPromptAttention(nn.Module):
    def __init__(self, d_t, d_v, update_text):
        super().__init__()
        self.visual = PromptUpdate(d_v, d_t)
        self.text = PromptUpdate(d_t, d_v) if update_text else None

    def forward(self, v, t):
        """v (N, n, d_v) and t (N, n, d_t) -> refined (v', t'); t' is None without a text half."""
        return self.visual(v, t), (self.text(t, v) if self.text is not None else None)


def fuse(x, mode):
    """Collapse the batch of prompt states (N, n, d) to (1, n, d), as the released code does."""
    if mode == "mean":
        return x.mean(0, keepdim=True)
    if mode == "first":
        return x[:1]
    if mode == "max":
        return x.max(0, keepdim=True).values
    return x


def check_dcp_cfg(c, layers):
    def fail(msg):
        raise ValueError(f"TRAINER.DCP: {msg}")
    if c.FUSING not in FUSINGS:
        fail(f'FUSING is "{c.FUSING}"; use one of {", ".join(FUSINGS)} ("none": each image its own prompts).')
    if c.N_CTX < 1:
        fail(f"N_CTX is {c.N_CTX}; DCP needs at least 1 prompt token.")
    if not 0 <= c.PROMPT_DEPTH <= layers - 1:
        fail(f"PROMPT_DEPTH is {c.PROMPT_DEPTH}, but blocks 1..PROMPT_DEPTH get refined prompts and this CLIP "
             f"has {layers} layers per encoder; use 0 (no refinement) to {layers - 1}.")


class DCPPromptLearner(nn.Module):
    def __init__(self, cfg, classnames, text_encoder, image_encoder):
        super().__init__()
        c = cfg.TRAINER.DCP
        image_encoder.require_vit("TRAINER.DCP", cfg.MODEL.BACKBONE.NAME)
        check_dcp_cfg(c, min(text_encoder.num_layers, image_encoder.num_layers))
        if not text_encoder.causal:
            raise ValueError(f"TRAINER.DCP: DCP follows the text prompt states on [SOS, prompts] alone, which "
                             f"is exact only in a causal text tower; the text tower of {cfg.MODEL.BACKBONE.NAME} "
                             "attends both ways (SigLIP). Use a CLIP-style backbone, or another method (MaPLe, "
                             "MuDPT, IVLP).")
        n, d_t, d_v = c.N_CTX, text_encoder.width, image_encoder.width
        ctx, prefix = init_context(text_encoder, n, c.CTX_INIT, owner="TRAINER.DCP")
        print(f'Initial context: "{prefix}"')
        print(f"Number of context words (tokens): {n}; refined blocks 1..{c.PROMPT_DEPTH}; shared attention: "
              f"{c.PS}; fusing: {c.FUSING}; text update: {c.UPDATE_TEXT}")
        self.n_ctx, self.depth, self.fusing, self.update_text = n, c.PROMPT_DEPTH, c.FUSING, c.UPDATE_TEXT
        self.prompts_text = nn.Parameter(ctx)
        self.prompts_visual = nn.Parameter(nn.init.normal_(torch.empty(n, d_v), std=0.02))
        copies = min(1, self.depth) if c.PS else self.depth
        self.prompt_attn = nn.ModuleList(CrossModalPromptAttention(d_t, d_v, c.UPDATE_TEXT) for _ in range(copies))
        self.classes = ClassPrompts(text_encoder, classnames, prefix, n)

    def attention(self, block):
        return self.prompt_attn[0 if len(self.prompt_attn) == 1 else block - 1]


class CoupledPromptHook:
    """Image-encoder hook that refines both modalities' prompts before blocks 1..depth.

    It advances the text prompt states through the text blocks in lockstep (on the short
    [SOS, prompts] sequence) and records the refined text prompts of each block.
    """

    def __init__(self, learner, text_encoder, image_encoder):
        self.learner, self.text_encoder = learner, text_encoder
        self.text_start = text_encoder.prompt_start  # the text prompt slots follow SOS
        self.visual_start = image_encoder.prompt_start(learner.n_ctx)
        sos = learner.classes.token_prefix[:1]
        x = torch.cat([sos, learner.prompts_text.unsqueeze(0).to(sos.dtype)], dim=1)
        self.text_state = text_encoder.positioned(x)
        self.text_prompts = []  # refined text prompts written before text blocks 1..depth

    def __call__(self, index, x):
        learner = self.learner
        if not 1 <= index <= learner.depth:
            return x
        n = learner.n_ctx
        # the text prompt slots' outputs of text block index-1 (causal: they see only SOS and prompts)
        self.text_state = self.text_encoder.run_block(index - 1, self.text_state)
        dtype = learner.prompts_visual.dtype  # the attention runs at the learner's precision
        start, text_start = self.visual_start % x.shape[1], self.text_start
        v = fuse(x[:, start:start + n].to(dtype), learner.fusing)
        t = fuse(self.text_state[:, text_start:text_start + n].to(dtype), learner.fusing).expand(v.shape[0], -1, -1)
        v_new, t_new = learner.attention(index)(v, t)
        if t_new is not None:
            self.text_state = splice(self.text_state.expand(t_new.shape[0], -1, -1), t_new, text_start)
            self.text_prompts.append(t_new)
        return splice(x, v_new, start)


class DCPCLIP(PromptedCLIP):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        self.prompt_learner = DCPPromptLearner(cfg, classnames, self.text_encoder, self.image_encoder)

    @property
    def text_depends_on_image(self):
        return self.prompt_learner.update_text and self.prompt_learner.depth > 0

    def encode_text(self, prompts=None):
        """Class text features: (C, E) from the layer-0 prompts, or with the refined prompts of
        each deep block, (P, n, d) per block, for P prompt sets -> (P, C, E)."""
        classes = self.prompt_learner.classes
        shallow = classes.assemble(self.prompt_learner.prompts_text)
        if not prompts:
            return self.text_encoder(shallow, classes.eot_index)
        num_sets, num_classes = prompts[0].shape[0], shallow.shape[0]
        embeddings = shallow.repeat(num_sets, 1, 1)  # prompt set p covers rows p*C .. p*C + C-1
        deep = [t.repeat_interleave(num_classes, dim=0) for t in prompts]
        features = self.text_encoder(embeddings, classes.eot_index.repeat(num_sets),
                                     hook=deep_prompt_hook(deep, start=self.text_encoder.prompt_start))
        return features.view(num_sets, num_classes, -1)

    def features(self, images, text_state=None):
        """Normalised image features (B, E) and the class features that score them: (B, C, E)
        when the image pass refined the text prompts, else the shared (C, E) (or the given state)."""
        learner = self.prompt_learner
        hook = CoupledPromptHook(learner, self.text_encoder, self.image_encoder)
        image = F.normalize(self.image_encoder(images, learner.prompts_visual, hook=hook).float(), dim=-1)
        if hook.text_prompts:  # text refined by the image(s): one prompt set per image, or one per batch
            text = F.normalize(self.encode_text(hook.text_prompts).float(), dim=-1)
            return image, text.expand(image.shape[0], -1, -1)
        if text_state is None:
            text_state = F.normalize(self.encode_text().float(), dim=-1)
        return image, text_state


@TRAINER_REGISTRY.register()
class DCP(PromptTuningTrainer):
    cfg_node = "DCP"
    model_name = "MultiModalPromptLearner"  # the released checkpoint folder name
    learnable_attr = "prompt_learner"

    def build_custom_clip(self, cfg, classnames, clip_model):
        return DCPCLIP(cfg, classnames, clip_model)
