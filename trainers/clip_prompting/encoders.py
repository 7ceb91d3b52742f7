"""The one prompt-aware forward of a CLIP's text and image transformers, for every backbone.

Methods never touch a library's code: they hand these encoders what they add at each block,
and ``run_blocks`` applies it: prompts spliced in before a block (``hook``), low-rank updates
inside its attention (``lora``), adapters acting after it (``after``) or inside it, on what its
attention reads and on its MLP's hidden layer (``inside``). Sequences are
batch-first, (N, L, D), throughout. The encoders take a backbone (``backbones.as_backbone``:
OpenAI CLIP, OpenCLIP with native or timm towers, Hugging Face CLIP) and run its parts.

Two execution paths compute the same function:
- fast (default): attention through ``scaled_dot_product_attention`` and, for a causal text
  tower, the sequence cut after the last pooled (EOT) token. Both are exact: the causal mask
  means no token before EOT can see the padding that is cut away, and LoRA and adapters act on
  each token separately (additions that mix neighbouring tokens name their ``reach``: the cut
  keeps that many tokens more).
- reference (``fast=False``): the library's own blocks over the whole context (LoRA merged into
  their weights), the straightforward implementation the fast path is tested and benchmarked
  against.
"""
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from backbones import as_backbone
from backbones.blocks import BlockStack, MultiheadAttentionBlocks


def splice(x, tokens, start):
    """Replace ``tokens.shape[-2]`` rows of x (N, L, D) from ``start`` (negative: from the end)."""
    n = tokens.shape[-2]
    if tokens.dim() == 2:
        tokens = tokens.unsqueeze(0)
    # expand, then cast: in fp16 the backward sums the batch's gradients in the prompts' fp32, as released
    tokens = tokens.expand(x.shape[0], -1, -1).to(x.dtype)
    start = start % x.shape[1]
    return torch.cat([x[:, :start], tokens, x[:, start + n:]], dim=1)


class DeepPromptHook:
    """Overwrites ``n`` rows from ``start`` with ``prompts[i-1]`` before block i >= 1.

    ``prompts`` holds one entry per deep block (block 1 first): (n, D) shared by the batch,
    or (N, n, D) per sequence. Blocks past ``len(prompts)`` run unchanged.
    """

    def __init__(self, prompts, start):
        self.prompts, self.start = prompts, start

    def __call__(self, index, x):
        if 1 <= index <= len(self.prompts):
            x = splice(x, self.prompts[index - 1], self.start)
        return x

    def rows(self, selection):
        """The hook for the sequences ``selection`` (a slice) of the pass: a chunk of it."""
        return DeepPromptHook([p[selection] if p.dim() == 3 else p for p in self.prompts], self.start)


def deep_prompt_hook(prompts, start):
    return DeepPromptHook(prompts, start)


# The text pass in chunks (MODEL.TEXT_CHUNK): "auto" chunks a pass of more than AUTO_THRESHOLD
# tokens (sequences x length) into chunks of about CHUNK_TOKENS tokens; 0 never chunks; N chunks
# N sequences at a time. With gradients on, each chunk keeps only its pooled features and is
# recomputed in the backward pass, so activation memory follows the chunk, not the class count.
CHUNK_TOKENS = 1024
AUTO_THRESHOLD = 4096


def check_text_chunk(value):
    """MODEL.TEXT_CHUNK as the encoders take it: None (auto), 0 (off) or a positive chunk size."""
    if value in (None, "auto"):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f'MODEL.TEXT_CHUNK is {value!r}; use auto (the default), 0 (never chunk the text pass) or a '
                     "positive number of class prompts per chunk.")


def chunk_rows(setting, rows, length):
    """Sequences per chunk for a pass of ``rows`` sequences of ``length`` tokens; None: one pass."""
    if setting is None:
        return max(1, CHUNK_TOKENS // length) if rows * length > AUTO_THRESHOLD else None
    return setting if 0 < setting < rows else None


def run_blocks(blocks, x, causal, hook=None, fast=True, after=None, lora=None, context=None, start=0, stop=None,
               inside=None):
    """Run blocks ``start``..``stop``-1 of a BlockStack with a method's additions at each block i.

    ``hook(i, x)`` runs before block i (prompts); ``lora.at(i)`` (an EncoderLoRA) updates its
    attention projections; ``after(i, x_in, x_out)`` runs after it and sees the block's input
    and output (adapters). ``inside(i, site, h)`` rewrites, within the block, what its attention
    reads (site "norm1") and its MLP's hidden layer (site "mlp_hidden"), batch-first (adapters).
    ``context``: what the tower's blocks need besides x (rotary embeddings).
    ``blocks`` may also be a list of OpenAI CLIP blocks (e.g. a slice of ``transformer.resblocks``).
    """
    if not isinstance(blocks, BlockStack):
        blocks = MultiheadAttentionBlocks(blocks, sequence_first=True)
    for index in range(start, len(blocks) if stop is None else stop):
        if hook is not None:
            x = hook(index, x)
        updates = lora.at(index) if lora is not None else None
        y = blocks.run(index, x, causal, updates, fast, context, inside)
        x = y if after is None else after(index, x, y)
    return x


class TowerParts:
    """The tower's parts (e.g. ``positional_embedding``, ``ln_final``) read through the encoder."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "tower":
                raise
            return getattr(self.tower, name)


class TextEncoder(TowerParts, nn.Module):
    """A backbone's text tower from token embeddings, with prompt hooks."""

    def __init__(self, model):
        super().__init__()
        backbone = as_backbone(model)
        self.tower = backbone.text
        self.tokenizer = backbone.tokenizer
        self.fast = True
        self.chunk = None  # MODEL.TEXT_CHUNK: None auto, 0 off, N sequences per chunk
        self.chunk_logged = False

    @property
    def dtype(self):
        return self.tower.dtype

    @property
    def width(self):
        return self.tower.width

    @property
    def num_layers(self):
        return self.tower.num_layers

    @property
    def token_embedding(self):
        return self.tower.token_embedding

    @property
    def causal(self):
        return self.tower.causal

    @property
    def prompt_start(self):
        """Where a prompt's learnable context starts: right after the start-of-text token, if any."""
        return self.tokenizer.prefix_length

    def tokenize(self, texts):
        return self.tokenizer(texts).to(self.token_embedding.weight.device)

    def pool_index(self, token_ids):
        """Position each sequence is pooled at (EOT, or the tower's rule)."""
        return self.tower.pool_index(token_ids)

    def embed(self, token_ids):
        with torch.no_grad():
            return self.tower.token_embedding(token_ids.long()).type(self.dtype)

    def positioned(self, embeddings):
        """Embeddings (N, L, D) plus the positional embedding of their L positions."""
        length = embeddings.shape[1]
        return embeddings.type(self.dtype) + self.tower.positional_embedding[:length].type(self.dtype)

    def run_block(self, index, x):
        """Text block ``index`` alone on x (fast path, no additions)."""
        return run_blocks(self.tower.blocks, x, self.causal, start=index, stop=index + 1)

    def forward(self, embeddings, eot_index, hook=None, after=None, lora=None, inside=None):
        """embeddings (C, L, D) prompt-token embeddings; eot_index (C,) the pooled positions.

        ``hook``, ``after``, ``lora`` and ``inside``: the method's additions at each block (see
        ``run_blocks``); ``inside.reach`` (if any): how many later tokens a token's result reads.
        A long pass runs in chunks of sequences (``self.chunk``); hooks with per-sequence prompts
        are cut to each chunk (``hook.rows``), adapters and LoRA act per sequence anyway.
        """
        rows = embeddings.shape[0]
        length = self.pass_length(embeddings, eot_index, inside)
        size = chunk_rows(self.chunk, rows, length)
        if size is None or (hook is not None and not hasattr(hook, "rows")):
            return self.text_pass(embeddings, eot_index, hook, after, lora, inside)
        if not self.chunk_logged and torch.is_grad_enabled():
            self.chunk_logged = True
            print(f"Text pass in chunks: {rows} sequences of {length} tokens, {size} per chunk, recomputed in the "
                  "backward pass")
        features = []
        # split, not slices: the chunks' gradients meet in one (C, L, D) tensor, not one per chunk
        for start, chunk, eot in zip(range(0, rows, size), embeddings.split(size), eot_index.split(size)):
            chunk_hook = None if hook is None else hook.rows(slice(start, start + size))
            args = (chunk, eot, chunk_hook, after, lora, inside)
            if torch.is_grad_enabled():  # keep the pooled features only; recompute in backward
                features.append(checkpoint(self.text_pass, *args, use_reentrant=False, preserve_rng_state=True))
            else:
                features.append(self.text_pass(*args))
        return torch.cat(features)

    def pass_length(self, embeddings, eot_index, inside=None):
        """Tokens the pass runs on: the fast path of a causal tower cuts after the last pooled token
        (plus the ``reach`` of additions that read later tokens); otherwise the whole context."""
        if not (self.fast and self.tower.causal):
            return embeddings.shape[1]
        return min(embeddings.shape[1], int(eot_index.max()) + 1 + getattr(inside, "reach", 0))

    def text_pass(self, embeddings, eot_index, hook=None, after=None, lora=None, inside=None):
        """One pass of the text tower over all the given sequences."""
        tower = self.tower
        x = self.positioned(embeddings[:, :self.pass_length(embeddings, eot_index, inside)])
        x = run_blocks(tower.blocks, x, causal=tower.causal, hook=hook, fast=self.fast, after=after, lora=lora,
                       inside=inside)
        x = tower.ln_final(x).type(self.dtype)
        rows = torch.arange(x.shape[0], device=x.device)
        return tower.project(x[rows, eot_index.to(x.device)])

    def encode_ids(self, token_ids, **additions):
        """Text features from token ids (ids from ``tokenize``); ``additions`` as in ``forward``."""
        return self(self.embed(token_ids), self.pool_index(token_ids), **additions)


class ImageEncoder(TowerParts, nn.Module):
    """A backbone's image tower with visual prompt tokens (transformer towers only).

    Prompt tokens go where the tower places them (``prompt_start``): appended after the patches
    (OpenAI, OpenCLIP, timm ViT: the released MaPLe convention), or, in towers with rotary
    position embeddings (EVA-02, PE-Core), right after the class token, as prefix tokens that
    the rotary embedding skips. Pooling sees the tower's own tokens only.
    """

    def __init__(self, model):
        super().__init__()
        backbone = as_backbone(model)
        self.tower = backbone.vision
        self.architecture = backbone.architecture
        self.fast = True

    @property
    def is_vit(self):
        return self.tower.is_transformer

    @property
    def dtype(self):
        return self.tower.dtype

    @property
    def width(self):
        return self.tower.width if self.is_vit else None

    @property
    def num_layers(self):
        return self.tower.num_layers

    def require_vit(self, owner, backbone="", alternative=""):
        """The one error for a method that works inside the image transformer (prompts, adapters,
        LoRA) given a convolutional tower (ResNet, ConvNeXt).

        ``backbone`` is MODEL.BACKBONE.NAME; the message names what the weights really are."""
        if not self.is_vit:
            named = f"MODEL.BACKBONE.NAME is {backbone}, but " if backbone and backbone != self.architecture else ""
            raise ValueError(f"{owner}: this method works inside the image transformer, so it needs a ViT "
                             f"backbone ({named}the CLIP weights are "
                             f"{self.architecture}); use e.g. ViT-B/16{alternative}. "
                             "ResNet CLIP backbones support text-side methods only, and so do ConvNeXt ones.")

    def prompt_start(self, n):
        """Index of the first of ``n`` prompt tokens in the sequence (negative: from the end)."""
        return self.tower.num_prefix_tokens if self.tower.prompt_placement == "prefix" else -n

    def insert_prompts(self, x, prompts):
        """x (B, L, D) with ``prompts`` (n, D) or (B, n, D) added at the tower's prompt place."""
        if prompts.dim() == 2:
            prompts = prompts.unsqueeze(0)
        prompts = prompts.expand(x.shape[0], -1, -1).type(self.dtype)  # cast after expanding, as splice
        if self.tower.prompt_placement == "prefix":
            at = self.tower.num_prefix_tokens
            return torch.cat([x[:, :at], prompts, x[:, at:]], dim=1)
        return torch.cat([x, prompts], dim=1)

    def remove_prompts(self, x, n):
        """x without its ``n`` prompt tokens."""
        if self.tower.prompt_placement == "prefix":
            at = self.tower.num_prefix_tokens
            return torch.cat([x[:, :at], x[:, at + n:]], dim=1)
        return x[:, :x.shape[1] - n]

    def tokens(self, images):
        """The tower's own tokens (B, L, D) before the pre-norm: class/prefix tokens and patches."""
        return self.tower.embed(images)[0]

    def forward(self, images, prompts=None, hook=None, after=None, lora=None, inside=None):
        """images (B, 3, H, W); prompts (n, D) or (B, n, D) inserted before the pre-norm (ln_pre).

        ``hook`` (block 0 sees the output of the pre-norm), ``after``, ``lora`` and ``inside``: the
        method's additions at each block (see ``run_blocks``).
        """
        if not self.is_vit:
            if any(a is not None for a in (prompts, hook, after, lora, inside)):
                self.require_vit("ImageEncoder")
            return self.tower.plain(images)
        x, context = self.tower.embed(images)
        own = x.shape[1]
        if prompts is not None:
            x = self.insert_prompts(x, prompts)
        x = self.tower.pre_norm(x)
        if context is not None:
            context = dict(context, own=own, num_prefix=self.tower.num_prefix_tokens)
        x = run_blocks(self.tower.blocks, x, causal=False, hook=hook, fast=self.fast, after=after, lora=lora,
                       context=context, inside=inside)
        return self.tower.pool(self.remove_prompts(x, x.shape[1] - own))


def set_text_chunk(module, setting):
    """Set MODEL.TEXT_CHUNK (None: auto, 0: off, N) on every text encoder inside ``module``."""
    for sub in module.modules():
        if isinstance(sub, TextEncoder):
            sub.chunk = setting


def describe_text_chunk(setting):
    if setting is None:
        return (f"auto (one pass up to {AUTO_THRESHOLD} tokens, sequences x length; above, chunks of about "
                f"{CHUNK_TOKENS} tokens recomputed in the backward pass)")
    return "off (one pass)" if setting == 0 else f"chunks of {setting} sequences, recomputed in the backward pass"


def set_fast_paths(module, enabled):
    """Switch every exact fast path inside ``module`` (any sub-module with a ``fast`` flag) on or off."""
    for sub in module.modules():
        if hasattr(sub, "fast"):
            sub.fast = enabled
