"""The backbone interface: what every method may use of a CLIP, whatever library built it.

A ``Backbone`` has a text tower, a vision tower, a tokenizer, the logit scale and bias, and
the preprocessing its weights expect. A family adapter (``openai.py``, ``open_clip_family.py``)
fills these parts from a library's model; the prompt-aware forward
(``trainers/clip_prompting/encoders.py``) runs them. Methods never reach a library's modules.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

# OpenAI CLIP's preprocessing, which the shipped configs carry.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocessing:
    size: int
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD
    interpolation: str = "bicubic"


class Tokenizer:
    """Text to token ids of one backbone: ``tokenizer(texts)`` -> (N, context_length) int64.

    ``prefix_length``: tokens before the text (1 for a start-of-text token, 0 without one); a
    prompt's learnable context takes the rows right after them. ``encode_truncated``: the
    library's encoding that cuts a text longer than the context (default: ``encode``, for
    libraries whose tokenizers always cut).
    """

    def __init__(self, encode, count, context_length, prefix_length=1, encode_truncated=None):
        self.encode, self.count_fn = encode, count
        self.context_length, self.prefix_length = context_length, prefix_length
        self.encode_truncated = encode_truncated or encode

    def __call__(self, texts):
        return self.encode(list(texts)).long()

    def truncated(self, texts):
        """Token ids like ``__call__``, but a text longer than the context is cut to it (its last
        token then becomes the end-of-text token) instead of refused: for long sentences such as
        class descriptions."""
        return self.encode_truncated(list(texts)).long()

    def count(self, text):
        """Tokens ``text`` takes in a sequence, without special tokens."""
        return self.count_fn(text)


class TextTower(nn.Module):
    """A text transformer's parts.

    token_embedding (nn.Embedding), positional_embedding (L, D), blocks (a BlockStack),
    causal (whether tokens see only earlier ones: then a sequence may be cut after its pooled
    token), ln_final; ``pool_index(ids)`` gives the position each sequence is pooled at and
    ``project`` maps the pooled state to the shared embedding space.
    """

    causal = True
    dtype = torch.float32

    @property
    def width(self):
        return self.positional_embedding.shape[1]

    @property
    def num_layers(self):
        return len(self.blocks)

    def pool_index(self, ids):
        raise NotImplementedError

    def project(self, x):
        raise NotImplementedError


class VisionTower(nn.Module):
    """An image tower's parts.

    A transformer tower has ``embed(images)`` -> (tokens (B, L, D) before the pre-norm,
    context for the blocks), ``pre_norm``, ``blocks`` (a BlockStack), ``pool(x, own)`` (the
    pooled, projected features from the final states, given the tower's own token positions)
    and ``prompt_placement``: "append" (prompt tokens after the patches) or "prefix" (after
    the class/register tokens, before the patches: where rotary embeddings skip them).
    Other towers (ResNet, ConvNeXt) have ``is_transformer`` False and only ``plain(images)``.
    """

    is_transformer = True
    prompt_placement = "append"
    num_prefix_tokens = 1
    dtype = torch.float32
    width = None

    @property
    def num_layers(self):
        return len(self.blocks) if self.is_transformer else 0

    def plain(self, images):
        raise NotImplementedError

    def token_norm(self, x):
        """The final norm of the tower's pooling on every token of x (B, L, D): what a method with a
        pooled feature of its own tokens reads (MMRL's representation head)."""
        raise NotImplementedError(f"{type(self).__name__} has no final norm that acts on each token")

    def project(self, x):
        """Pooled, normalised features (B, D) into the shared embedding space: the tower's projection."""
        raise NotImplementedError(f"{type(self).__name__} has no projection separate from its pooling")


class Backbone(nn.Module):
    """A CLIP of any family behind one interface.

    ``text``, ``vision``: the towers; ``tokenizer``; ``logit_scale`` (log scale, as stored) and
    ``logit_bias`` (SigLIP's, else None); ``preprocessing``; ``family`` and ``architecture``
    (for logs and run facts); ``embed_dim``; ``model``: the library's own module (tests compare
    against its ``encode_image``/``encode_text``).
    """

    family = ""
    architecture = ""

    def __init__(self, model, text, vision, tokenizer, logit_scale, logit_bias, preprocessing, embed_dim):
        super().__init__()
        self.__dict__["model"] = model  # not a sub-module: the towers register what they use
        self.text, self.vision = text, vision
        self.tokenizer = tokenizer
        self.logit_scale, self.logit_bias = logit_scale, logit_bias
        self.preprocessing = preprocessing
        self.embed_dim = embed_dim

    def to_half(self):
        """The frozen weights in fp16 for the GPU precision mode (LayerNorms as the library keeps them)."""
        raise NotImplementedError

    def round_to_half(self, keep_half=False):
        """The frozen weights as the released prompt-tuning code loads them (reference numerics)."""
        raise ValueError(f"MODEL.REFERENCE_NUMERICS reproduces the released code bases, which load OpenAI's CLIP "
                         f"with clip.build_model; this backbone is of the {self.family} family. Leave "
                         "MODEL.REFERENCE_NUMERICS False for it.")

    def facts(self):
        return {"family": self.family, "architecture": self.architecture}
