"""Class prompt text, its token buffers, and word initialisation of learnable context."""
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from .loading import tokenize


def clean_classname(name):
    return name.replace("_", " ")


def count_bpe_tokens(text, tokenizer=None):
    """Number of tokens of ``text`` (without special tokens); OpenAI's BPE unless ``tokenizer``."""
    if tokenizer is not None:
        return tokenizer.count(text)
    return int(tokenize([text]).argmax(dim=-1)) - 1


def context_length(n_ctx, ctx_init, tokenizer, owner, default):
    """CoOp's rule, kept by CoOp, CoCoOp and KgCoOp: a CTX_INIT phrase fixes the number of context
    vectors to its token count, whatever N_CTX says. An N_CTX that differs from that count and from
    the node's ``default`` (so the user set it) is dropped with one note naming both values."""
    ctx_init = ctx_init.replace("_", " ").strip()
    if not ctx_init:
        return n_ctx
    count = count_bpe_tokens(ctx_init, tokenizer)
    if n_ctx not in (count, default):
        print(f'Note: {owner}.N_CTX {n_ctx} is not used: CTX_INIT "{ctx_init}" has {count} tokens, so the '
              f"context has {count} vectors (the original code's rule: CTX_INIT decides the length). "
              f'For {n_ctx} randomly initialised vectors set {owner}.CTX_INIT "".')
    return count


def init_context(text_encoder, n_ctx, ctx_init="", std=0.02, owner="TRAINER"):
    """Learnable context vectors and the prompt prefix text they stand for.

    Word initialisation when ``ctx_init`` has at least ``n_ctx`` BPE tokens: the vectors are
    the embeddings of its first ``n_ctx`` tokens and the prompt text keeps the whole
    template (so with n = 2, "of a" stays as frozen tokens). Otherwise N(0, std) with the
    placeholder prefix "X X ... X".
    """
    ctx_init = ctx_init.replace("_", " ").strip()
    words = count_bpe_tokens(ctx_init, text_encoder.tokenizer) if ctx_init else 0
    if ctx_init and n_ctx <= words:
        ids = text_encoder.tokenize([ctx_init])
        start = text_encoder.prompt_start
        ctx = text_encoder.embed(ids)[0, start:start + n_ctx].float().clone()
        return ctx, ctx_init
    if ctx_init:
        warnings.warn(f'{owner}.CTX_INIT "{ctx_init}" has {words} tokens, fewer than '
                      f"N_CTX={n_ctx}; the context is initialised randomly instead.")
    ctx = torch.empty(n_ctx, text_encoder.width)
    nn.init.normal_(ctx, std=std)
    return ctx, " ".join(["X"] * n_ctx)


class ClassPrompts(nn.Module):
    """Token buffers of ``"{prefix} {classname}."`` for every class.

    ``n_ctx`` learnable rows follow SOS; ``prefix`` is the prompt text they start as (a
    method's learned text context, recorded in run_facts.json). ``token_prefix`` (C, 1, D) is SOS;
    ``token_suffix`` (C, 77-1-n, D) holds the class tokens, ".", EOT and padding.
    They depend on the class set, so checkpoints leave them out and they are rebuilt
    for the classes being evaluated.
    """

    def __init__(self, text_encoder, classnames, prefix, n_ctx):
        super().__init__()
        names = [clean_classname(c) for c in classnames]
        ids = text_encoder.tokenize([f"{prefix} {name}." for name in names])
        embedding = text_encoder.embed(ids)
        start = text_encoder.prompt_start  # context rows follow the start-of-text token, if any
        self.n_ctx = n_ctx
        self.prefix = prefix
        self.name_lens = [count_bpe_tokens(name, text_encoder.tokenizer) for name in names]
        self.register_buffer("tokenized_prompts", ids, persistent=False)
        self.register_buffer("pool_index", text_encoder.pool_index(ids), persistent=False)
        self.register_buffer("token_prefix", embedding[:, :start], persistent=False)
        self.register_buffer("token_suffix", embedding[:, start + n_ctx:], persistent=False)

    @property
    def eot_index(self):
        """The position each class prompt is pooled at (its EOT token, or the tower's rule)."""
        return self.pool_index

    def assemble(self, ctx):
        """Prompt embeddings (C, 77, D) with ``ctx`` (n, D), (C, n, D) in the context rows."""
        num_classes = self.token_prefix.shape[0]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(num_classes, -1, -1)
        ctx = ctx.to(self.token_prefix.dtype)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)


def learned_text_context(model):
    """The ClassPrompts of ``model``'s learned text context, None when the method learns none.

    Every method with learned text context builds its class prompts with ClassPrompts, so its
    context length and prompt text are read here, the same way for all of them."""
    return next((m for m in model.modules() if isinstance(m, ClassPrompts)), None)


@torch.no_grad()
def template_text_features(text_encoder, classnames, template):
    """Frozen, L2-normalised fp32 text features (C, E) of ``template.format(classname)``."""
    ids = text_encoder.tokenize([template.format(clean_classname(c)) for c in classnames])
    return F.normalize(text_encoder.encode_ids(ids).float(), dim=-1)
