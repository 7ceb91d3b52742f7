"""The one prompt-aware forward of CLIP's text and image transformers.

Methods never touch CLIP's code: they hand these encoders what they add at each block, and
``run_blocks`` applies it: prompts spliced in before a block (``hook``), low-rank updates
inside its attention (``lora``), adapters acting after it (``after``). Sequences are
batch-first, (N, L, D), throughout.

Two execution paths compute the same function:
- fast (default): attention through ``scaled_dot_product_attention`` and, for text,
  the sequence cut after the last EOT token. Both are exact: the causal mask means no
  token before EOT can see the padding that is cut away, and LoRA and adapters act on
  each token separately.
- reference (``fast=False``): CLIP's own residual blocks over all 77 positions (LoRA
  merged into their weights), the straightforward implementation the fast path is tested
  and benchmarked against.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from .loading import vision_architecture


def splice(x, tokens, start):
    """Replace ``tokens.shape[-2]`` rows of x (N, L, D) from ``start`` (negative: from the end)."""
    n = tokens.shape[-2]
    if tokens.dim() == 2:
        tokens = tokens.unsqueeze(0)
    tokens = tokens.to(x.dtype).expand(x.shape[0], -1, -1)
    start = start % x.shape[1]
    return torch.cat([x[:, :start], tokens, x[:, start + n:]], dim=1)


def deep_prompt_hook(prompts, start):
    """Hook that overwrites ``n`` rows from ``start`` with ``prompts[i-1]`` before block i >= 1.

    ``prompts`` holds one entry per deep block (block 1 first): (n, D) shared by the batch,
    or (N, n, D) per sequence. Blocks past ``len(prompts)`` run unchanged.
    """
    def hook(index, x):
        if 1 <= index <= len(prompts):
            x = splice(x, prompts[index - 1], start)
        return x
    return hook


def attention(attn, x, causal, lora=None):
    """nn.MultiheadAttention's self-attention, batch-first, through SDPA; ``lora``: an AttentionLoRA."""
    n, length, width = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    if lora is not None:
        q, k, v = (lora.updated(name, x, t) for name, t in zip("qkv", (q, k, v)))
    q, k, v = (t.reshape(n, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    out = out.transpose(1, 2).reshape(n, length, width)
    return attn.out_proj(out) if lora is None else lora.updated("o", out, attn.out_proj(out))


def residual_block(block, x, causal, lora=None):
    """CLIP's pre-LN residual block on a batch-first sequence."""
    x = x + attention(block.attn, block.ln_1(x), causal, lora)
    return x + block.mlp(block.ln_2(x))


def reference_block(block, x, lora=None):
    """CLIP's own block: sequence-first, its stored 77x77 mask, LoRA merged into its weights."""
    x = x.transpose(0, 1)
    x = block(x) if lora is None else functional_call(block, lora.merged(block.attn), (x,))
    return x.transpose(0, 1)


def run_blocks(blocks, x, causal, hook=None, fast=True, after=None, lora=None):
    """Run CLIP residual blocks with a method's additions at each block i.

    ``hook(i, x)`` runs before block i (prompts); ``lora.at(i)`` (an EncoderLoRA) updates its
    attention projections; ``after(i, x_in, x_out)`` runs after it and sees the block's input
    and output (adapters).
    """
    for index, block in enumerate(blocks):
        if hook is not None:
            x = hook(index, x)
        updates = lora.at(index) if lora is not None else None
        y = residual_block(block, x, causal, updates) if fast else reference_block(block, x, updates)
        x = y if after is None else after(index, x, y)
    return x


class TextEncoder(nn.Module):
    """CLIP's text tower from token embeddings, with prompt hooks."""

    def __init__(self, clip_model):
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.token_embedding = clip_model.token_embedding
        self.fast = True

    @property
    def dtype(self):
        return self.text_projection.dtype

    @property
    def width(self):
        return self.ln_final.weight.shape[0]

    @property
    def num_layers(self):
        return len(self.transformer.resblocks)

    def embed(self, token_ids):
        with torch.no_grad():
            return self.token_embedding(token_ids.long()).type(self.dtype)

    def forward(self, embeddings, eot_index, hook=None, after=None, lora=None):
        """embeddings (C, 77, D) prompt-token embeddings; eot_index (C,) EOT positions.

        ``hook``, ``after`` and ``lora``: the method's additions at each block (see ``run_blocks``).
        """
        length = int(eot_index.max()) + 1 if self.fast else embeddings.shape[1]
        x = embeddings[:, :length].type(self.dtype) + self.positional_embedding[:length].type(self.dtype)
        x = run_blocks(self.transformer.resblocks, x, causal=True, hook=hook, fast=self.fast, after=after, lora=lora)
        x = self.ln_final(x).type(self.dtype)
        rows = torch.arange(x.shape[0], device=x.device)
        return x[rows, eot_index.to(x.device)] @ self.text_projection

    def encode_ids(self, token_ids, **additions):
        """Text features from token ids (ids from ``tokenize``); ``additions`` as in ``forward``."""
        return self(self.embed(token_ids), token_ids.argmax(dim=-1), **additions)


class ImageEncoder(nn.Module):
    """CLIP's image tower with visual prompt tokens appended after the patches (ViT only)."""

    def __init__(self, clip_model):
        super().__init__()
        self.visual = clip_model.visual
        self.is_vit = hasattr(self.visual, "transformer")
        self.fast = True

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype

    @property
    def width(self):
        return self.visual.conv1.weight.shape[0] if self.is_vit else None

    @property
    def num_layers(self):
        return len(self.visual.transformer.resblocks) if self.is_vit else 0

    def require_vit(self, owner, backbone="", alternative=""):
        """The one error for a method that works inside the image transformer (prompts, adapters,
        LoRA) given a ResNet backbone.

        ``backbone`` is MODEL.BACKBONE.NAME; the message names what the weights really are."""
        if not self.is_vit:
            architecture = vision_architecture(self.visual)
            named = f"MODEL.BACKBONE.NAME is {backbone}, but " if backbone and backbone != architecture else ""
            raise ValueError(f"{owner}: this method works inside the image transformer, so it needs a ViT "
                             f"backbone ({named}the CLIP weights are "
                             f"{architecture}); use e.g. ViT-B/16{alternative}. "
                             "ResNet CLIP backbones support text-side methods only.")

    def tokens(self, images):
        """Patch tokens with CLS and positional embedding: (B, 1 + patches, D)."""
        v = self.visual
        x = v.conv1(images.type(self.dtype)).flatten(2).transpose(1, 2)
        cls = v.class_embedding.type(self.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + v.positional_embedding.type(self.dtype)

    def forward(self, images, prompts=None, hook=None, after=None, lora=None):
        """images (B, 3, H, W); prompts (n, D) or (B, n, D) appended before ln_pre.

        ``hook`` (block 0 sees the output of ``ln_pre``), ``after`` and ``lora``: the method's
        additions at each block (see ``run_blocks``).
        """
        if not self.is_vit:
            if any(a is not None for a in (prompts, hook, after, lora)):
                self.require_vit("ImageEncoder")
            return self.visual(images.type(self.dtype))
        x = self.tokens(images)
        if prompts is not None:
            if prompts.dim() == 2:
                prompts = prompts.unsqueeze(0)
            x = torch.cat([x, prompts.type(self.dtype).expand(x.shape[0], -1, -1)], dim=1)
        x = self.visual.ln_pre(x)
        x = run_blocks(self.visual.transformer.resblocks, x, causal=False, hook=hook, fast=self.fast, after=after,
                       lora=lora)
        return self.visual.ln_post(x[:, 0]) @ self.visual.proj


def set_fast_paths(module, enabled):
    """Switch every exact fast path inside ``module`` (any sub-module with a ``fast`` flag) on or off."""
    for sub in module.modules():
        if hasattr(sub, "fast"):
            sub.fast = enabled
