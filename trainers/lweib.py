"""LwEIB: learning with enriched inductive biases (Yang et al., IJCV 2025).

A frozen CLIP with inductive biases at three levels, as released:
- text: each class is described by several sentences (an LLM's, in the CuPL form; DATASET.DESCRIPTIONS),
  prompted "{TEXT_CTX_INIT} {class}, {sentence}". A training step encodes one sentence per scored
  class, drawn uniformly; evaluation averages each class's normalised features over all of its
  sentences and normalises the mean.
- model: in blocks ADAPTER_START..ADAPTER_END of both encoders (layers count from 1), two bias-free
  depthwise convolutions per block: one on the output of the block's first LayerNorm (what its
  attention reads; the residual stream is left as it is) and one on its MLP's hidden layer (after
  the first Linear, before the activation), each as h + s * conv(h). Text: kernel-3 1-D convolutions
  along the sequence (padding included); image: 3x3 convolutions over the patch grid, the class
  token left out. They keep PyTorch's default initialisation, so they are not an identity at the
  start. As in MMA, an adapter's input gradient is scaled by s and its output gradient by 1 / s.
- optimisation ("slow-fast"): in training each block of each encoder pass draws u ~ U[0, 1) from
  the global RNG (text pass first, then image pass, every block whether adapted or not); its
  adapters use s = ADAPTER_SCALE * ADAPTER_SCALE_FACTOR when u > SLOW_FAST_RATIO, else ADAPTER_SCALE.
  Evaluation uses ADAPTER_SCALE and draws nothing (the released code draws there too, unused).

Negatives: when the dataset has more classes than the batch has images, a step scores only the
batch's classes (sorted) followed by min(#others, NEG_SAMPLING_RATIO x #batch classes) other classes
drawn uniformly without replacement, and the labels are renumbered to that order; ratio 0 scores
the batch's classes only, a negative ratio every class. Every draw (negatives, sentences, scales)
uses the global RNG in the released order, so a resumed run repeats them. In a run on several
processes each one samples from the labels of the whole batch, so all score the same classes and
the update is the one-process update.

The text adapters mix neighbouring tokens, including padding after the end-of-text token: the fast
path's cut after EOT keeps 2 tokens per adapted block more, which keeps it exact.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY

from datasets.descriptions import class_descriptions

from .clip_prompting import PromptedCLIP, PromptTuningTrainer, clean_classname
from .mma import ScaleGradient

try:  # this project's engine runs one training on several processes (torchrun); the original, on one
    from dassl.utils.distributed import gather_in_rank_order, get_rank
except ImportError:
    gather_in_rank_order = get_rank = None

KERNEL = 3  # the released kernel size of every adapter: 3 along the text, 3x3 over the patch grid


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN
    cfg.TRAINER.LWEIB = CN()
    cfg.TRAINER.LWEIB.TEXT_CTX_INIT = "a photo of a"
    cfg.TRAINER.LWEIB.ADAPTER_START = 1
    cfg.TRAINER.LWEIB.ADAPTER_END = 12
    cfg.TRAINER.LWEIB.ADAPTER_SCALE = 0.025
    cfg.TRAINER.LWEIB.ADAPTER_SCALE_FACTOR = 2.5
    cfg.TRAINER.LWEIB.SLOW_FAST_RATIO = 0.8
    cfg.TRAINER.LWEIB.NEG_SAMPLING_RATIO = 7
    cfg.TRAINER.LWEIB.PREC = "fp32"


def check_lweib_cfg(c, layers):
    def fail(msg):
        raise ValueError(f"TRAINER.LWEIB: {msg}")
    if not 1 <= c.ADAPTER_START <= c.ADAPTER_END <= layers:
        fail(f"ADAPTER_START {c.ADAPTER_START} and ADAPTER_END {c.ADAPTER_END} must satisfy 1 <= START <= END <= "
             f"{layers} (layer l: block l of this CLIP's {layers}; the adapters act inside blocks, so there is no "
             "layer 0).")
    if not c.ADAPTER_SCALE > 0 or not c.ADAPTER_SCALE_FACTOR > 0:
        fail(f"ADAPTER_SCALE {c.ADAPTER_SCALE} and ADAPTER_SCALE_FACTOR {c.ADAPTER_SCALE_FACTOR} must be positive "
             "(the inverse scale multiplies the adapters' gradients).")
    if not 0 <= c.SLOW_FAST_RATIO <= 1:
        fail(f"SLOW_FAST_RATIO is {c.SLOW_FAST_RATIO}; it is the probability of the slow scale, in [0, 1] "
             "(1: always ADAPTER_SCALE).")
    if isinstance(c.NEG_SAMPLING_RATIO, bool) or not isinstance(c.NEG_SAMPLING_RATIO, int):
        fail(f"NEG_SAMPLING_RATIO is {c.NEG_SAMPLING_RATIO!r}; it must be a whole number: negatives per batch class "
             "(0: the batch's classes only, negative: every class).")


class DepthwiseConv(nn.Module):
    """A bias-free depthwise convolution along batch-first tokens (N, L, C): 1-D along the sequence,
    or 2-D over a square grid of the L tokens in row-major order (the patch order)."""

    def __init__(self, channels, dims):
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.conv = conv(channels, channels, KERNEL, padding=KERNEL // 2, groups=channels, bias=False)
        self.dims = dims

    def forward(self, x):
        n, length, channels = x.shape
        y = x.transpose(1, 2)
        if self.dims == 2:
            side = math.isqrt(length)
            y = y.reshape(n, channels, side, side)
        return self.conv(y).reshape(n, channels, length).transpose(1, 2)


class BlockAdapters(nn.Module):
    """The two adapters of one block (released names): on what the attention reads, on the MLP's hidden layer."""

    def __init__(self, width, hidden, dims):
        super().__init__()
        self.att_conv = DepthwiseConv(width, dims)
        self.mlp_conv = DepthwiseConv(hidden, dims)


def block_adapters(blocks, width, start, end, dims):
    """Adapters of layers start..end (block l - 1), None elsewhere; layer 0 stays None (no block)."""
    modules = [None] * (len(blocks) + 1)
    for layer in range(start, end + 1):
        modules[layer] = BlockAdapters(width, blocks.mlp_in(layer - 1).out_features, dims)
    return nn.ModuleList(modules)


def adapted(conv, x, scale):
    """x + scale * conv(x), with the adapter's input gradient scaled by ``scale`` and its output's by 1 / scale."""
    y = conv(ScaleGradient.apply(x, scale).to(conv.conv.weight.dtype))
    return x + ScaleGradient.apply(y * scale, 1.0 / scale).to(x.dtype)


class AdapterSites:
    """The ``inside`` additions of one encoder pass: block i's adapters (layer i + 1) at scale ``scales[i]``.

    ``skip`` leading tokens (the image's class token) pass unchanged; the image adapters see the
    rest as a square patch grid. ``reach``: how many later tokens a token's result reads (the text
    convolutions look one token ahead each)."""

    def __init__(self, adapters, scales, skip=0, reach=0):
        self.adapters, self.scales, self.skip, self.reach = adapters, scales, skip, reach

    def __call__(self, index, site, h):
        adapters = self.adapters[index + 1]
        if adapters is None:
            return h
        conv = adapters.att_conv if site == "norm1" else adapters.mlp_conv
        kept, tokens = h[:, :self.skip], h[:, self.skip:]
        if conv.dims == 2 and math.isqrt(tokens.shape[1]) ** 2 != tokens.shape[1]:
            raise ValueError(f"TRAINER.LWEIB: the image adapters convolve a square patch grid, but block {index} "
                             f"sees {tokens.shape[1]} patch tokens; use square images (INPUT.SIZE) and a tower with "
                             "one class token and no register tokens.")
        tokens = adapted(conv, tokens, self.scales[index])
        return torch.cat([kept, tokens], dim=1) if self.skip else tokens


class AdapterLearner(nn.Module):
    """All learnable tensors of LwEIB: per-layer text and visual adapters (the released names)."""

    # what a released checkpoint holds besides the adapters (its class prompts' tokens), skipped on loading
    class_dependent_buffers = ("tk_prompts", "text_features_for_inference")

    def __init__(self, c, text_blocks, text_width, vision_blocks, vision_width):
        super().__init__()
        self.text_adapter = block_adapters(text_blocks, text_width, c.ADAPTER_START, c.ADAPTER_END, dims=1)
        self.visual_adapter = block_adapters(vision_blocks, vision_width, c.ADAPTER_START, c.ADAPTER_END, dims=2)
        self.scale = float(c.ADAPTER_SCALE)
        self.fast_scale = float(c.ADAPTER_SCALE) * float(c.ADAPTER_SCALE_FACTOR)
        self.slow_fast_ratio = float(c.SLOW_FAST_RATIO)
        self.text_reach = 2 * (KERNEL // 2) * (c.ADAPTER_END - c.ADAPTER_START + 1)

    def scales(self, blocks):
        """One scale per block: in training each block draws the slow or the fast one, as released."""
        if not self.training:
            return [self.scale] * blocks
        # the released draw: torch.rand(1) on the CPU generator, compared in its float32
        return [self.fast_scale if bool(torch.rand(1) > self.slow_fast_ratio) else self.scale
                for _ in range(blocks)]


class LwEIBCLIP(PromptedCLIP):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        c = cfg.TRAINER.LWEIB
        self.image_encoder.require_vit("TRAINER.LWEIB", cfg.MODEL.BACKBONE.NAME)
        text_blocks, vision_blocks = self.text_encoder.tower.blocks, self.image_encoder.tower.blocks
        check_lweib_cfg(c, min(len(text_blocks), len(vision_blocks)))
        self.descriptions = class_descriptions(cfg, classnames)
        self.neg_sampling_ratio = int(c.NEG_SAMPLING_RATIO)
        lead = " ".join(w for w in (c.TEXT_CTX_INIT.strip(), "{}") if w)
        texts, owners = [], []
        for label, (name, sentences) in enumerate(zip(classnames, self.descriptions.sentences)):
            texts += [f"{lead.format(clean_classname(name))}, {sentence}" for sentence in sentences]
            owners += [label] * len(sentences)
        counts = [len(s) for s in self.descriptions.sentences]
        self.counts = torch.tensor(counts)  # on the CPU, where the sentence draws are made
        print(f'Prompts: "{texts[0]}" ... ({len(texts)} prompts, {min(counts)} to {max(counts)} descriptions per '
              f"class, from {self.descriptions.source})")
        device = self.text_encoder.token_embedding.weight.device
        ids = self.text_encoder.tokenizer.truncated(texts).to(device)  # long sentences are cut, as released
        self.register_buffer("description_ids", ids, persistent=False)
        self.register_buffer("description_class", torch.tensor(owners, device=device), persistent=False)
        self.register_buffer("description_count", self.counts.to(device), persistent=False)
        self.register_buffer("description_start", (self.counts.cumsum(0) - self.counts).to(device), persistent=False)
        self.adapter_learner = AdapterLearner(c, text_blocks, self.text_encoder.width, vision_blocks,
                                              self.image_encoder.width)
        print(f"Adapters in layers {c.ADAPTER_START}..{c.ADAPTER_END}, scale {c.ADAPTER_SCALE} (fast: x "
              f"{c.ADAPTER_SCALE_FACTOR} with probability {1 - c.SLOW_FAST_RATIO:g}), negatives per batch class "
              f"{c.NEG_SAMPLING_RATIO}")

    @property
    def num_classes(self):
        return self.description_count.shape[0]

    # -- the passes --------------------------------------------------------------------------
    def encode_text(self, rows):
        """Features of the description prompts ``rows`` (indices into the flat list), text adapters on."""
        learner = self.adapter_learner
        ids = self.description_ids[rows]
        sites = AdapterSites(learner.text_adapter, learner.scales(self.text_encoder.num_layers),
                             reach=learner.text_reach)
        return self.text_encoder(self.text_encoder.embed(ids), self.text_encoder.pool_index(ids), inside=sites)

    def encode_image(self, images, prompts=None):
        learner = self.adapter_learner
        sites = AdapterSites(learner.visual_adapter, learner.scales(self.image_encoder.num_layers),
                             skip=self.image_encoder.tower.num_prefix_tokens)
        return self.image_encoder(images, inside=sites)

    def text_features(self):
        """Class features (C, E): each class's normalised description features averaged, then normalised."""
        rows = torch.arange(len(self.description_ids), device=self.description_ids.device)
        features = F.normalize(self.encode_text(rows).float(), dim=-1)
        total = features.new_zeros(self.num_classes, features.shape[1]).index_add_(0, self.description_class, features)
        return F.normalize(total / self.description_count[:, None], dim=-1)

    # -- a training step ------------------------------------------------------------------------
    def sample_classes(self, labels):
        """The classes a step scores and the labels renumbered to them (None: every class, labels as they are)."""
        ratio = self.neg_sampling_ratio
        if ratio < 0 or self.num_classes <= labels.shape[0]:
            return None, labels
        positives, target = torch.unique(labels, return_inverse=True)
        if ratio == 0:
            return positives, target
        others = torch.ones(self.num_classes, dtype=torch.bool, device=labels.device)
        others[positives] = False
        others = others.nonzero().squeeze(1)
        count = min(len(others), len(positives) * ratio)
        picked = torch.multinomial(torch.ones(len(others)), count)  # the CPU generator, as released
        return torch.cat([positives, others[picked.to(others.device)]]), target

    def sample_descriptions(self, classes):
        """One description row per class of ``classes`` (None: every class), drawn uniformly."""
        n = self.num_classes if classes is None else len(classes)
        if bool((self.counts == self.counts[0]).all()):  # the released draw: as many sentences in every class
            picked = torch.randint(0, int(self.counts[0]), (1, n), dtype=torch.long)[0]
        else:  # any counts (the released code needs equal ones): uniform within each class
            count = self.counts if classes is None else self.counts[classes.cpu()]
            picked = torch.minimum((torch.rand(n) * count).long(), count - 1)
        start = self.description_start if classes is None else self.description_start[classes]
        return start + picked.to(start.device)

    def training_logits(self, images, labels, rows=slice(None)):
        """Logits (B, K) over the classes a step samples from the batch ``labels``, the labels of ``images``
        renumbered to them and those classes (None: every class). ``rows``: which of the batch ``images``
        are (one process's share of it in a distributed run; every process samples alike)."""
        classes, target = self.sample_classes(labels)
        text = F.normalize(self.encode_text(self.sample_descriptions(classes)).float(), dim=-1)
        image = F.normalize(self.encode_image(images).float(), dim=-1)
        return self.logits(image, text), target[rows], classes

    def features(self, images, text_state=None):
        if self.training and text_state is None:  # a step over every class, one drawn sentence each
            text = F.normalize(self.encode_text(self.sample_descriptions(None)).float(), dim=-1)
            return F.normalize(self.encode_image(images).float(), dim=-1), text
        if text_state is None:
            text_state = self.text_features()
        return F.normalize(self.encode_image(images).float(), dim=-1), text_state


@TRAINER_REGISTRY.register()
class LwEIB(PromptTuningTrainer):
    cfg_node = "LWEIB"
    model_name = "adapter_learner"  # the released checkpoint folder name
    learnable_attr = "adapter_learner"

    def build_custom_clip(self, cfg, classnames, clip_model):
        return LwEIBCLIP(cfg, classnames, clip_model)

    def compute_loss(self, image, label):
        """Cross-entropy over the step's sampled classes; the logits come back over every class (the
        unsampled ones at -inf), so the logged accuracy reads the original labels."""
        logits, target, classes = self.model.training_logits(image, *whole_batch(label))
        loss = F.cross_entropy(logits.float(), target)
        if classes is None:
            return loss, logits
        full = logits.new_full((logits.shape[0], self.model.num_classes), float("-inf"))
        return loss, full.index_copy(1, classes, logits.detach())


def whole_batch(labels):
    """The labels of the step's whole batch and the rows of it that ``labels`` are: in a run on several
    processes each holds a contiguous slice of the batch (in rank order)."""
    parts = [labels] if gather_in_rank_order is None else gather_in_rank_order(labels.cpu())
    if len(parts) == 1:
        return labels, slice(None)
    start = sum(len(part) for part in parts[:get_rank()])
    return torch.cat(parts).to(labels.device), slice(start, start + len(labels))
