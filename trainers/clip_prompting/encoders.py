"""The one prompt-aware forward of CLIP's text and image transformers.

Methods never touch CLIP's code: they hand these encoders their prompt tensors, and
a per-block hook splices them into the token sequence. Sequences are batch-first,
(N, L, D), throughout.

Two execution paths compute the same function:
- fast (default): attention through ``scaled_dot_product_attention`` and, for text,
  the sequence cut after the last EOT token. Both are exact: the causal mask means no
  token before EOT can see the padding that is cut away.
- reference (``fast=False``): CLIP's own residual blocks over all 77 positions, the
  straightforward implementation the fast path is tested and benchmarked against.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


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


def attention(attn, x, causal):
    """nn.MultiheadAttention's self-attention, batch-first, through SDPA."""
    n, length, width = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    out = out.transpose(1, 2).reshape(n, length, width)
    return attn.out_proj(out)


def residual_block(block, x, causal):
    """CLIP's pre-LN residual block on a batch-first sequence."""
    x = x + attention(block.attn, block.ln_1(x), causal)
    return x + block.mlp(block.ln_2(x))


def run_blocks(blocks, x, causal, hook=None, fast=True):
    """Run CLIP residual blocks, calling ``hook(i, x)`` before block i (to insert prompts)."""
    for index, block in enumerate(blocks):
        if hook is not None:
            x = hook(index, x)
        if fast:
            x = residual_block(block, x, causal)
        else:  # CLIP's own block: sequence-first, its stored 77x77 mask
            x = block(x.transpose(0, 1)).transpose(0, 1)
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

    def forward(self, embeddings, eot_index, hook=None):
        """embeddings (C, 77, D) prompt-token embeddings; eot_index (C,) EOT positions."""
        length = int(eot_index.max()) + 1 if self.fast else embeddings.shape[1]
        x = embeddings[:, :length].type(self.dtype) + self.positional_embedding[:length].type(self.dtype)
        x = run_blocks(self.transformer.resblocks, x, causal=True, hook=hook, fast=self.fast)
        x = self.ln_final(x).type(self.dtype)
        rows = torch.arange(x.shape[0], device=x.device)
        return x[rows, eot_index.to(x.device)] @ self.text_projection

    def encode_ids(self, token_ids, hook=None):
        """Plain text features from token ids (ids from ``tokenize``)."""
        return self(self.embed(token_ids), token_ids.argmax(dim=-1), hook=hook)


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
        """The one error for a method that inserts visual prompts into a ResNet backbone."""
        if not self.is_vit:
            name = f" (MODEL.BACKBONE.NAME is {backbone})" if backbone else ""
            raise ValueError(f"{owner}: visual prompts need a ViT backbone{name}; use e.g. ViT-B/16{alternative}. "
                             "ResNet CLIP backbones support text-side methods only.")

    def tokens(self, images):
        """Patch tokens with CLS and positional embedding: (B, 1 + patches, D)."""
        v = self.visual
        x = v.conv1(images.type(self.dtype)).flatten(2).transpose(1, 2)
        cls = v.class_embedding.type(self.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + v.positional_embedding.type(self.dtype)

    def forward(self, images, prompts=None, hook=None):
        """images (B, 3, H, W); prompts (n, D) or (B, n, D) appended before ln_pre."""
        if not self.is_vit:
            if prompts is not None or hook is not None:
                self.require_vit("ImageEncoder")
            return self.visual(images.type(self.dtype))
        x = self.tokens(images)
        if prompts is not None:
            if prompts.dim() == 2:
                prompts = prompts.unsqueeze(0)
            x = torch.cat([x, prompts.type(self.dtype).expand(x.shape[0], -1, -1)], dim=1)
        x = self.visual.ln_pre(x)
        x = run_blocks(self.visual.transformer.resblocks, x, causal=False, hook=hook, fast=self.fast)
        return self.visual.ln_post(x[:, 0]) @ self.visual.proj


def set_fast_paths(module, enabled):
    """Switch every exact fast path inside ``module`` (any sub-module with a ``fast`` flag) on or off."""
    for sub in module.modules():
        if hasattr(sub, "fast"):
            sub.fast = enabled
