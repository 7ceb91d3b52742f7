"""MuDPT: Multi-modal Deep-symphysis Prompt Tuning (Miao et al., arXiv 2306.11400).

Deep text prompts T (D x n x d_t) and deep visual prompts V (D x n x d_v). An Injection
Model per direction, shared across layers, maps each modality's deep prompts to the
other's width; the fused prompts T_hat = T + V' and V_hat = V + T' replace the prompt
slots before blocks 1..D-1 (paper eq. 6-11). Layer 0 takes T_0 and V_0 unfused unless
SHALLOW_FUSION reproduces the released code. CLIP stays frozen.

Injection modes (TRAINER.MUDPT.INJECTION / INJECTION_NORM / SHALLOW_FUSION):
- transformer / post / False: the paper's Fig. 4 block (default);
- transformer / pre / True: the released UUMuDPT variant (pre-LN block + outer LayerNorms);
- linear / - / True: the released HEAD MuDPT (one shared Linear per direction plus a
  separate Linear feeding T_0 to V_0).
VISUAL_PROMPTS from_text (with transformer / pre / True) is the released UMuDPT: no visual
prompts of its own and no vision-to-text map; V_0..V_{D-1} are the text-to-vision
injection of T_0..T_{D-1}.

PREFIX: the paper's template keeps the whole CTX_INIT in the prompt text ("a photo of a
{class}." with the first N_CTX tokens learnable); the released code keeps only its first
N_CTX words ("a photo {class}." at N_CTX 2).
"""
import torch
import torch.nn as nn

from dassl.engine import TRAINER_REGISTRY

from .clip_prompting import ClassPrompts, DeepPromptedCLIP, PromptTuningTrainer, init_context
from .clip_prompting.prompts import count_bpe_tokens
from .clip_prompting.released import rename_released_keys, replay_openai_clip_draws

INJECTIONS = ("transformer", "linear")
NORMS = ("post", "pre")
VISUAL_PROMPTS = ("independent", "from_text")
PREFIXES = ("template", "released")


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN  # as CoOp: the original dassl.config exports no CfgNode
    cfg.TRAINER.MUDPT = CN()
    cfg.TRAINER.MUDPT.N_CTX = 4
    cfg.TRAINER.MUDPT.CTX_INIT = "a photo of a"
    cfg.TRAINER.MUDPT.DEEP_PROMPT_DEPTH = 12
    cfg.TRAINER.MUDPT.PREC = "fp32"
    cfg.TRAINER.MUDPT.INJECTION = "transformer"
    cfg.TRAINER.MUDPT.INJECTION_NORM = "post"
    cfg.TRAINER.MUDPT.SHALLOW_FUSION = False
    cfg.TRAINER.MUDPT.VISUAL_PROMPTS = "independent"  # or from_text (released UMuDPT)
    cfg.TRAINER.MUDPT.PREFIX = "template"  # or released: the first N_CTX words of CTX_INIT


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class InjectionBlock(nn.Module):
    """A Transformer encoder block over the n prompt tokens of each layer (layers = batch).

    ``post``: x = LN(x + MHA(x)); x = LN(x + FFN(x))   (paper Fig. 4)
    ``pre``:  x = x + MHA(LN x); x = x + FFN(LN x)     (released UUMuDPT)
    """

    def __init__(self, width, norm):
        super().__init__()
        self.norm = norm
        self.attn = nn.MultiheadAttention(width, width // 64, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), QuickGELU(), nn.Linear(4 * width, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x):  # (layers, n, width)
        if self.norm == "post":
            x = self.ln_1(x + self.attn(x, x, x, need_weights=False)[0])
            return self.ln_2(x + self.mlp(x))
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Injection(nn.Module):
    """Maps prompts (layers, n, d_in) of one modality to (layers, n, d_out) of the other."""

    def __init__(self, d_in, d_out, mode, norm):
        super().__init__()
        self.block = InjectionBlock(d_in, norm) if mode == "transformer" else None
        outer = mode == "transformer" and norm == "pre"  # UUMuDPT wraps its block in two LayerNorms
        self.ln_pre = nn.LayerNorm(d_in) if outer else None
        self.ln_post = nn.LayerNorm(d_in) if outer else None
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x):
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        if self.block is not None:
            x = self.block(x)
        if self.ln_post is not None:
            x = self.ln_post(x)
        return self.proj(x)


def check_mudpt_cfg(c, text_layers, vision_layers, tokenizer=None):
    def fail(msg):
        raise ValueError(f"TRAINER.MUDPT: {msg}")
    if c.INJECTION not in INJECTIONS:
        fail(f'INJECTION is "{c.INJECTION}"; use one of {", ".join(INJECTIONS)}.')
    if c.INJECTION_NORM not in NORMS:
        fail(f'INJECTION_NORM is "{c.INJECTION_NORM}"; use one of {", ".join(NORMS)}.')
    if c.VISUAL_PROMPTS not in VISUAL_PROMPTS:
        fail(f'VISUAL_PROMPTS is "{c.VISUAL_PROMPTS}"; use one of {", ".join(VISUAL_PROMPTS)}.')
    if c.PREFIX not in PREFIXES:
        fail(f'PREFIX is "{c.PREFIX}"; use one of {", ".join(PREFIXES)}.')
    if c.VISUAL_PROMPTS == "from_text" and not c.SHALLOW_FUSION:
        fail("VISUAL_PROMPTS from_text makes every visual prompt from the text prompts, V_0 from T_0 "
             "included; set SHALLOW_FUSION True as well (it is what feeds T_0 to the vision side).")
    if c.N_CTX < 1:
        fail(f"N_CTX is {c.N_CTX}; the prompt length must be at least 1.")
    layers = min(text_layers, vision_layers)
    if not 1 <= c.DEEP_PROMPT_DEPTH <= layers:
        fail(f"DEEP_PROMPT_DEPTH is {c.DEEP_PROMPT_DEPTH}, but this CLIP has {layers} layers per encoder; "
             f"use 1 <= DEEP_PROMPT_DEPTH <= {layers}.")
    if c.CTX_INIT:
        words = count_bpe_tokens(c.CTX_INIT.replace("_", " "), tokenizer)
        if c.N_CTX > words:
            fail(f'N_CTX is {c.N_CTX}, but CTX_INIT "{c.CTX_INIT}" has only {words} tokens to initialise the '
                 f'text prompt from; set N_CTX <= {words}, or CTX_INIT "" for random initialisation.')


def released_prefix(ctx_init, n_ctx):
    """The released code's prompt text: the first ``n_ctx`` words of CTX_INIT ("a photo" at n = 2)."""
    return " ".join(ctx_init.replace("_", " ").split()[:n_ctx])


class MultimodalPromptLearner(nn.Module):
    """All learnable tensors of MuDPT: prompts of both modalities and the Injection Model."""

    def __init__(self, cfg, classnames, text_encoder, image_encoder):
        super().__init__()
        c = cfg.TRAINER.MUDPT
        image_encoder.require_vit("TRAINER.MUDPT", cfg.MODEL.BACKBONE.NAME)
        check_mudpt_cfg(c, text_encoder.num_layers, image_encoder.num_layers, text_encoder.tokenizer)
        n, depth = c.N_CTX, c.DEEP_PROMPT_DEPTH
        d_t, d_v = text_encoder.width, image_encoder.width
        ctx, prefix = init_context(text_encoder, n, c.CTX_INIT, owner="TRAINER.MUDPT")
        if c.PREFIX == "released" and c.CTX_INIT:
            prefix = released_prefix(c.CTX_INIT, n)
        from_text = c.VISUAL_PROMPTS == "from_text"
        print(f'Initial context: "{prefix}"')
        print(f"Number of context words (tokens): {n}")
        print(f"Depth of deep prompt: {depth}")
        print(f"Injection: {c.INJECTION} (norm {c.INJECTION_NORM}), shallow fusion: {c.SHALLOW_FUSION}, "
              f"visual prompts: {c.VISUAL_PROMPTS}")

        self.n_ctx, self.depth, self.shallow_fusion = n, depth, c.SHALLOW_FUSION
        self.text_ctx = nn.Parameter(ctx)                                   # T_0
        self.text_deep = nn.Parameter(torch.empty(depth - 1, n, d_t))       # T_1..T_{D-1}
        nn.init.normal_(self.text_deep, std=0.02)
        self.visual_ctx = self.visual_deep = None
        if not from_text:
            self.visual_ctx = nn.Parameter(torch.empty(n, d_v))             # V_0
            self.visual_deep = nn.Parameter(torch.empty(depth - 1, n, d_v))  # V_1..V_{D-1}
            for p in (self.visual_ctx, self.visual_deep):
                nn.init.normal_(p, std=0.02)

        self.inj_t2v = self.inj_v2t = self.shallow_t2v = None
        if depth > 1 or from_text:
            self.inj_t2v = Injection(d_t, d_v, c.INJECTION, c.INJECTION_NORM)
        if depth > 1 and not from_text:
            self.inj_v2t = Injection(d_v, d_t, c.INJECTION, c.INJECTION_NORM)
        if c.SHALLOW_FUSION and not from_text:
            if c.INJECTION == "linear":  # the released HEAD code feeds T_0 through its own Linear
                self.shallow_t2v = nn.Linear(d_t, d_v)
            elif self.inj_t2v is None:
                self.inj_t2v = Injection(d_t, d_v, c.INJECTION, c.INJECTION_NORM)
        self.classes = ClassPrompts(text_encoder, classnames, prefix, n)

    def text_to_vision(self):
        """The text prompts at the vision width: (T'_0, or None when layer 0 is not fused; T'_1..T'_{D-1})."""
        if self.shallow_t2v is not None:  # released HEAD MuDPT: T_0 has a Linear of its own
            deep = self.inj_t2v(self.text_deep) if self.inj_t2v is not None else None
            return self.shallow_t2v(self.text_ctx), deep
        if self.shallow_fusion:  # released UUMuDPT / UMuDPT: T_0 goes through the injection with the rest
            mapped = self.inj_t2v(torch.cat([self.text_ctx.unsqueeze(0), self.text_deep]))
            return mapped[0], mapped[1:]
        return None, (self.inj_t2v(self.text_deep) if self.inj_t2v is not None else None)

    def draw_as_released(self, clip_model, rng_state):
        """Reference numerics: the initial prompts and maps the released linear MuDPT draws from the
        global RNG at ``rng_state`` (before CLIP was built), and the RNG where it leaves it. Its modified
        vision tower draws V_0, V_1.. and the vision-to-text Linear inside clip.build_model, after the
        positional embedding; its prompt learner then draws the shallow Linear, T_1.. and the
        text-to-vision Linear (T_0: the CTX_INIT words, or first, N(0, 0.02))."""
        torch.set_rng_state(rng_state)
        n, d_v = self.visual_ctx.shape
        d_t = self.text_ctx.shape[1]

        def vision_tower_draws():
            ctx = nn.init.normal_(torch.empty(n, d_v), std=0.02)
            deep = nn.init.normal_(torch.empty(self.depth - 1, n, d_v), std=0.02)
            return ctx, deep, nn.Linear(d_v, self.inj_v2t.proj.out_features)
        visual_ctx, visual_deep, v2t = replay_openai_clip_draws(clip_model, vision_tower_draws)
        v2t.half().float()  # a Linear inside CLIP: build_model's fp16 conversion rounds it too
        random_ctx = self.classes.prefix == " ".join(["X"] * n)  # no CTX_INIT: T_0 is drawn first
        text_ctx = nn.init.normal_(torch.empty(n, d_t), std=0.02) if random_ctx else None
        shallow = nn.Linear(d_t, d_v)
        text_deep = nn.init.normal_(torch.empty(self.depth - 1, n, d_t), std=0.02)
        t2v = nn.Linear(d_t, self.inj_t2v.proj.out_features)
        with torch.no_grad():
            for ours, theirs in ((self.visual_ctx, visual_ctx), (self.visual_deep, visual_deep),
                                 (self.text_deep, text_deep), (self.text_ctx, text_ctx)):
                if theirs is not None:
                    ours.copy_(theirs)
            for ours, theirs in ((self.inj_v2t.proj, v2t), (self.shallow_t2v, shallow), (self.inj_t2v.proj, t2v)):
                ours.load_state_dict(theirs.state_dict())

    def from_released_state(self, state_dict):
        """A checkpoint of the released linear MuDPT (HEAD ``MuDPT``): the whole model, the visual prompts
        and their projection kept in its image encoder."""
        return rename_released_keys(state_dict, {
            "mudpt_prompt_learner.ctx": "text_ctx", "mudpt_prompt_learner.deep_prompts": "text_deep",
            "mudpt_prompt_learner.embed_projection.": "shallow_t2v.",
            "mudpt_prompt_learner.deep_projections.": "inj_t2v.proj.",
            "image_encoder.visual_ctx_deep_projections.": "inj_v2t.proj.",
            "image_encoder.visual_ctx_deep_prompts": "visual_deep", "image_encoder.visual_ctx": "visual_ctx",
        }, ("mudpt_prompt_learner.",), "MuDPT's code")

    def forward(self):
        """Prompts for both encoders: shallow (n, d) and fused deep (D-1, n, d) of each modality."""
        shallow_t2v, deep_t2v = self.text_to_vision()
        if self.visual_ctx is None:  # from_text: every visual prompt comes from the text prompts
            return {"text": self.classes.assemble(self.text_ctx), "text_deep": self.text_deep,
                    "visual": shallow_t2v, "visual_deep": deep_t2v}
        text_deep, visual_deep = self.text_deep, self.visual_deep
        visual_shallow = self.visual_ctx if shallow_t2v is None else self.visual_ctx + shallow_t2v
        if self.depth > 1:
            text_deep, visual_deep = text_deep + self.inj_v2t(visual_deep), visual_deep + deep_t2v
        return {"text": self.classes.assemble(self.text_ctx), "text_deep": text_deep,
                "visual": visual_shallow, "visual_deep": visual_deep}


class MuDPTCLIP(DeepPromptedCLIP):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        self.prompt_learner = MultimodalPromptLearner(cfg, classnames, self.text_encoder, self.image_encoder)


@TRAINER_REGISTRY.register()
class MuDPT(PromptTuningTrainer):
    cfg_node = "MUDPT"
    model_name = "MultimodalDeepPromptTuning"  # the released checkpoint folder name
    learnable_attr = "prompt_learner"

    def check_cfg(self, cfg):
        if cfg.TRAINER.MUDPT.PREC == "fp16":
            raise ValueError('TRAINER.MUDPT.PREC "fp16" trains fp16 prompts and is NaN-prone; use "fp32" '
                             '(default) or "amp" (mixed precision with fp32 parameters).')
        super().check_cfg(cfg)

    def build_custom_clip(self, cfg, classnames, clip_model):
        return MuDPTCLIP(cfg, classnames, clip_model)

    def use_reference_numerics(self):
        super().use_reference_numerics()
        c, learner = self.method_cfg, self.model.prompt_learner
        if c.INJECTION == "linear" and c.SHALLOW_FUSION and c.VISUAL_PROMPTS == "independent" and learner.depth > 1:
            learner.draw_as_released(self.backbone.model, self.rng_before_backbone)
            print("Initial prompts drawn as the released MuDPT draws them (inside its CLIP, then its learner)")
        else:
            print("Note: the released code's order of initial draws is reproduced for the released linear MuDPT "
                  "(INJECTION linear, SHALLOW_FUSION True); this variant keeps its own initial prompts")
