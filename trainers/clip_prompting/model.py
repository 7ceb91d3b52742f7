"""Base module of a prompt-tuned CLIP: frozen encoders + a method's learnable prompts."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from backbones import as_backbone

from .encoders import ImageEncoder, TextEncoder, deep_prompt_hook


class PromptedCLIP(nn.Module):
    """CLIP with method-specific prompts.

    ``forward(images, text_state=None)`` is two steps, for every method:
    1. ``features(images, text_state)`` -> (normalised image features (B, E), text state);
    2. ``logits(image_features, text_state)`` -> (B, C), CLIP's scaled cosine similarities.
    The text state is what scores the images: normalised class features (C, E) shared by
    the batch, or (B, C, E), one set per image, when the text depends on the image.

    A method whose text does not depend on the image implements ``prompts()`` (whatever
    its encoders need, computed once per forward from its parameters),
    ``encode_text(prompts)`` -> (C, E) and ``encode_image(images, prompts)`` -> (B, E);
    evaluation then computes ``text_state()`` once and passes it in. A method whose text
    depends on the image (``text_depends_on_image``: CoCoOp, DCP) overrides ``features``
    instead; one whose text state holds more than the class features (DPT) overrides
    ``text_state``, ``features`` and ``logits``. ``text_features()`` is always the
    normalised (C, E) class features.
    """

    text_depends_on_image = False
    # Features are compared in fp32; None keeps the encoders' dtype, as the released code does in
    # fp16 (the trainer's reference numerics, MODEL.REFERENCE_NUMERICS).
    feature_dtype = torch.float32
    fast = True  # False (set_fast_paths): per-image scoring computed as the released code does
    class_dependent_buffers = ("token_prefix", "token_suffix", "tokenized_prompts")

    def __init__(self, clip_model):
        """``clip_model``: a Backbone, or a library's CLIP module (wrapped by ``as_backbone``)."""
        super().__init__()
        backbone = as_backbone(clip_model)
        self.text_encoder = TextEncoder(backbone)
        self.image_encoder = ImageEncoder(backbone)
        self.embed_dim = backbone.embed_dim
        self.register_buffer("logit_scale", backbone.logit_scale.detach().float().exp(), persistent=False)
        bias = backbone.logit_bias
        self.register_buffer("logit_bias", None if bias is None else bias.detach().float(), persistent=False)
        for p in backbone.model.parameters():
            p.requires_grad_(False)

    def prompts(self):
        return None

    def encode_text(self, prompts):
        raise NotImplementedError(f"{type(self).__name__} has no class text features of its own: its text "
                                  "depends on each image (use features(images))")

    def encode_image(self, images, prompts):
        return self.image_encoder(images)

    def normalise(self, features):
        """L2-normalised ``features``, in ``feature_dtype``."""
        if self.feature_dtype is not None:
            features = features.to(self.feature_dtype)
        return F.normalize(features, dim=-1)

    def text_features(self):
        """Normalised class text features (C, E)."""
        return self.normalise(self.encode_text(self.prompts()))

    def text_state(self):
        """The text state when it does not depend on the image: what evaluation computes once
        and passes to ``forward`` for every batch."""
        if self.text_depends_on_image:
            raise ValueError(f"{type(self).__name__}'s text depends on each image: there is no text state to "
                             "compute once; call the model on the images alone")
        return self.text_features()

    def features(self, images, text_state=None):
        """Step 1: normalised image features (B, E) and the text state that scores them; a given
        text state (from ``text_state()``) is used as it is."""
        prompts = self.prompts()
        image_features = self.normalise(self.encode_image(images, prompts))
        if text_state is None:
            text_state = self.normalise(self.encode_text(prompts))
        return image_features, text_state

    def logits(self, image_features, text_state):
        """Step 2: scaled cosine similarities (B, C) with class features shared by the batch
        (C, E) or one set per image (B, C, E)."""
        if text_state.dim() == 3 and not self.fast:  # one image at a time, as released
            logits = torch.stack([self.logit_scale * f @ t.t() for f, t in zip(image_features, text_state)])
        elif text_state.dim() == 3:
            logits = self.logit_scale * torch.einsum("be,bce->bc", image_features, text_state)
        else:
            logits = self.logit_scale * image_features @ text_state.t()
        # SigLIP's learned bias (other families have none): the same shift for every class
        return logits if self.logit_bias is None else logits + self.logit_bias

    def forward(self, images, text_state=None):
        if text_state is not None and self.text_depends_on_image:
            raise ValueError(f"{type(self).__name__}'s text depends on each image, so it takes no text state "
                             "computed beforehand; call it on the images alone")
        return self.logits(*self.features(images, text_state))

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]


class DeepPromptedCLIP(PromptedCLIP):
    """CLIP with deep prompts in both towers, produced by ``self.prompt_learner``.

    The learner returns {"text": (C, L, D) embeddings with the shallow text prompt after SOS,
    "text_deep": (D-1, n, d_t), "visual": (n, d_v) inserted at the tower's prompt place,
    "visual_deep": (D-1, n, d_v)} and has ``classes`` (ClassPrompts) and ``n_ctx``. Deep prompts
    replace those n slots of each tower before blocks 1..D-1.
    """

    def prompts(self):
        return self.prompt_learner()

    def encode_text(self, prompts):
        hook = deep_prompt_hook(prompts["text_deep"], start=self.text_encoder.prompt_start)
        return self.text_encoder(prompts["text"], self.prompt_learner.classes.eot_index, hook=hook)

    def encode_image(self, images, prompts):
        start = self.image_encoder.prompt_start(self.prompt_learner.n_ctx)
        hook = deep_prompt_hook(prompts["visual_deep"], start=start)
        return self.image_encoder(images, prompts["visual"], hook=hook)
