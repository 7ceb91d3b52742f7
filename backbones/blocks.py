"""Transformer blocks of each library, run the two ways the prompt-aware forward needs.

A ``BlockStack`` holds one tower's blocks and runs block ``i`` on a batch-first sequence
(N, L, D), with a LoRA update of its attention projections when one is given:
- ``fast``: this project's own attention through ``scaled_dot_product_attention``, with the
  low-rank updates added to the projections it computes (so LoRA dropout can act);
- reference: the library's own block, with the updates merged into its weights.
Both compute the same function; the tests hold them equal on every family. Adapters that act
inside a block (``inside``: on what its attention reads, or on its MLP's hidden layer) are
forward hooks on those modules for the block call, so both paths run them alike.
"""
import torch
import torch.nn.functional as F
from torch.func import functional_call


def mha_attention(attn, x, causal, lora=None):
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


def merged_weights(lora, names, weights):
    """The weights of one attention with ``lora``'s updates merged in, keyed by parameter name.

    ``names`` maps q, k, v, o to ``(parameter name, first row)``: q, k and v may be row blocks
    of one fused matrix. ``weights`` gives each named matrix."""
    if lora.training and any(update.dropout.p > 0 for update in lora.values()):
        raise RuntimeError("The reference path merges LoRA updates into the weights, which cannot express "
                           "LoRA dropout during training; train with the fast paths on (the default).")
    merged = {}
    for projection, update in lora.items():
        name, row = names[projection]
        weight = merged.get(name, weights[name])
        delta = update.weight().to(weight.dtype)
        merged[name] = torch.cat([weight[:row], weight[row:row + delta.shape[0]] + delta,
                                  weight[row + delta.shape[0]:]])
    return merged


class BlockStack:
    """One tower's blocks; a family subclass says how to run them."""

    def __init__(self, blocks):
        self.blocks = blocks

    def __len__(self):
        return len(self.blocks)

    def run(self, index, x, causal, lora=None, fast=True, context=None, inside=None):
        raise NotImplementedError

    def norm1(self, index):
        """The LayerNorm in front of block ``index``'s attention (MMA's adapters read through it)."""
        raise NotImplementedError

    def mlp_in(self, index):
        """The first Linear of block ``index``'s MLP: its output is the hidden layer, before the activation."""
        raise NotImplementedError


class MultiheadAttentionBlocks(BlockStack):
    """Pre-LN residual blocks on nn.MultiheadAttention: OpenAI CLIP and OpenCLIP's native towers.

    ``x + ls_1(attn(ln_1 x))``, ``x + ls_2(mlp(ln_2 x))``; ``ls_*`` is OpenCLIP's LayerScale,
    absent in OpenAI's blocks. ``sequence_first``: the library's block takes (L, N, D).
    ``mask``: the library's causal mask (reference path), or None.
    """

    def __init__(self, blocks, sequence_first, mask=None):
        super().__init__(blocks)
        self.sequence_first = sequence_first
        self.mask = mask

    def run(self, index, x, causal, lora=None, fast=True, context=None, inside=None):
        block = self.blocks[index]
        with InsideHooks(self, index, inside, sequence_first=self.sequence_first and not fast):
            if fast:
                return self.residual(block, x, causal, lora)
            return self.reference(block, x, causal, lora)

    @staticmethod
    def residual(block, x, causal, lora=None):
        ls_1, ls_2 = getattr(block, "ls_1", None), getattr(block, "ls_2", None)
        y = mha_attention(block.attn, block.ln_1(x), causal, lora)
        x = x + (y if ls_1 is None else ls_1(y))
        y = block.mlp(block.ln_2(x))
        return x + (y if ls_2 is None else ls_2(y))

    def reference(self, block, x, causal, lora=None):
        weights = {} if lora is None else self.lora_weights(block.attn, lora)
        if self.sequence_first:  # OpenAI's block keeps its own 77x77 mask
            x = x.transpose(0, 1)
            x = block(x) if lora is None else functional_call(block, weights, (x,))
            return x.transpose(0, 1)
        kwargs = {}
        if causal:
            kwargs["attn_mask"] = self.mask[:x.shape[1], :x.shape[1]]
        return block(x, **kwargs) if lora is None else functional_call(block, weights, (x,), kwargs)

    @staticmethod
    def lora_weights(attn, lora):
        """The block's attention weights with ``lora`` merged in, by parameter name."""
        width = attn.embed_dim
        names = {p: ("attn.in_proj_weight", i * width) for i, p in enumerate("qkv")}
        names["o"] = ("attn.out_proj.weight", 0)
        return merged_weights(lora, names, {"attn.in_proj_weight": attn.in_proj_weight,
                                            "attn.out_proj.weight": attn.out_proj.weight})

    def norm1(self, index):
        return self.blocks[index].ln_1

    def mlp_in(self, index):
        return self.blocks[index].mlp.c_fc


class TimmBlocks(BlockStack):
    """timm's ViT and EVA blocks (SigLIP, EVA-02, PE-Core vision towers), run as the library's own.

    timm's blocks already attend through SDPA on batch-first sequences, so both paths call the
    block itself. LoRA: the fast path adds each update to the output of the projection it belongs
    to (forward hooks, so LoRA dropout acts); the reference path merges the updates into the
    weights. Rotary position embeddings (``context["rope"]``) cover the patches only: the attention
    skips the prefix tokens (CLS and any prompt tokens placed before the patches), whose count it
    is told per call.
    """

    def run(self, index, x, causal, lora=None, fast=True, context=None, inside=None):
        with InsideHooks(self, index, inside, sequence_first=False):
            return self.run_block(index, x, lora, fast, context)

    def run_block(self, index, x, lora, fast, context):
        block = self.blocks[index]
        kwargs, prefix = {}, None
        rope = None if context is None else context.get("rope")
        if rope is not None:  # the tower's prefix tokens and any prompt tokens placed among them
            kwargs["rope"] = rope[index] if context.get("rope_per_block") else rope
            prefix = context["num_prefix"] + x.shape[1] - context["own"]
        with prefix_tokens(block.attn, prefix):
            if lora is None:
                return block(x, **kwargs)
            if fast:
                with LoRAHooks(block.attn, lora):
                    return block(x, **kwargs)
            return functional_call(block, self.lora_weights(block.attn, lora), (x,), kwargs)

    @staticmethod
    def lora_weights(attn, lora):
        """The block's attention weights with ``lora`` merged in, by parameter name."""
        if getattr(attn, "qkv", None) is not None:
            width = attn.qkv.weight.shape[0] // 3
            names = {p: ("attn.qkv.weight", i * width) for i, p in enumerate("qkv")}
            weights = {"attn.qkv.weight": attn.qkv.weight}
        else:
            names = {p: (f"attn.{p}_proj.weight", 0) for p in "qkv"}
            weights = {f"attn.{p}_proj.weight": getattr(attn, f"{p}_proj").weight for p in "qkv"}
        names["o"] = ("attn.proj.weight", 0)
        weights["attn.proj.weight"] = attn.proj.weight
        return merged_weights(lora, names, weights)

    def norm1(self, index):
        return self.blocks[index].norm1

    def mlp_in(self, index):
        fc1 = getattr(self.blocks[index].mlp, "fc1", None)
        if fc1 is None:  # timm's SwiGLU: separate gate and value projections, no one hidden layer
            raise ValueError(f"Block {index} of this image tower has a gated MLP "
                             f"({type(self.blocks[index].mlp).__name__}) with separate gate and value projections: "
                             "no single hidden layer for an adapter to act on. Use a backbone whose MLP blocks "
                             "start with one Linear (e.g. OpenAI ViT-B/16).")
        return fc1


class InsideHooks:
    """Within the block call, ``inside(index, site, h)`` replaces the output ``h`` of the block's first
    norm (site "norm1": what its attention reads) and of its MLP's first Linear (site "mlp_hidden":
    before the activation). ``h`` is batch-first, (N, L, D), whatever layout the library's block uses."""

    def __init__(self, stack, index, inside, sequence_first):
        self.stack, self.index, self.inside, self.sequence_first = stack, index, inside, sequence_first
        self.handles = []

    def __enter__(self):
        if self.inside is not None:
            self.handles = [self.stack.norm1(self.index).register_forward_hook(self.rewrite("norm1")),
                            self.stack.mlp_in(self.index).register_forward_hook(self.rewrite("mlp_hidden"))]

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    def rewrite(self, site):
        def hook(module, inputs, out):
            if self.sequence_first:
                return self.inside(self.index, site, out.transpose(0, 1)).transpose(0, 1)
            return self.inside(self.index, site, out)
        return hook


class LoRAHooks:
    """Within the block call, each projection's output gets its low-rank update of the input.

    EVA's fused q/k/v projection with separate biases is computed by ``F.linear`` on its weight,
    not by calling the module; for the call its biases are lifted out (so the module is called)
    and added back in the hook."""

    def __init__(self, attn, lora):
        self.attn, self.lora, self.handles, self.biases = attn, lora, [], None

    def __enter__(self):
        attn, lora = self.attn, self.lora
        if getattr(attn, "qkv", None) is not None:
            if getattr(attn, "q_bias", None) is not None and not getattr(attn, "qkv_bias_separate", False):
                self.biases = (attn.q_bias, attn.k_bias, attn.v_bias)
                attn.q_bias = None
            self.handles.append(attn.qkv.register_forward_hook(self.fused))
        else:
            for name in "qkv":
                self.handles.append(getattr(attn, f"{name}_proj").register_forward_hook(self.single(name)))
        if "o" in lora:
            self.handles.append(attn.proj.register_forward_hook(self.single("o")))

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        if self.biases is not None:
            self.attn.q_bias = self.biases[0]

    def fused(self, module, inputs, out):
        if self.biases is not None:
            out = out + torch.cat(self.biases).to(out.dtype)
        x = inputs[0]
        return torch.cat([self.lora.updated(p, x, t) for p, t in zip("qkv", out.chunk(3, dim=-1))], dim=-1)

    def single(self, name):
        return lambda module, inputs, out: self.lora.updated(name, inputs[0], out)


class prefix_tokens:
    """Within the block call, the attention treats ``count`` leading tokens as prefix tokens."""

    def __init__(self, attn, count):
        self.attn, self.count = attn, count

    def __enter__(self):
        if self.count is not None and hasattr(self.attn, "num_prefix_tokens"):
            self.saved = self.attn.num_prefix_tokens
            self.attn.num_prefix_tokens = self.count

    def __exit__(self, *exc):
        if self.count is not None and hasattr(self.attn, "num_prefix_tokens"):
            self.attn.num_prefix_tokens = self.saved
