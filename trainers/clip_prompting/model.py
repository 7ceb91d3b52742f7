"""Base module of a prompt-tuned CLIP: frozen encoders + a method's learnable prompts."""
import torch.nn as nn
import torch.nn.functional as F

from .encoders import ImageEncoder, TextEncoder, deep_prompt_hook


class PromptedCLIP(nn.Module):
    """CLIP with method-specific prompts.

    A method implements ``prompts()`` (whatever its encoders need, computed once per
    forward from its parameters), ``encode_text(prompts)`` -> (C, E) and
    ``encode_image(images, prompts)`` -> (B, E). The logits are CLIP's scaled cosine
    similarities. When the text side does not depend on the image
    (``text_depends_on_image = False``), evaluation computes text features once and
    passes them in.
    """

    text_depends_on_image = False
    class_dependent_buffers = ("token_prefix", "token_suffix", "tokenized_prompts")

    def __init__(self, clip_model):
        super().__init__()
        self.text_encoder = TextEncoder(clip_model)
        self.image_encoder = ImageEncoder(clip_model)
        self.register_buffer("logit_scale", clip_model.logit_scale.detach().float().exp(), persistent=False)
        for p in clip_model.parameters():
            p.requires_grad_(False)

    def prompts(self):
        return None

    def encode_text(self, prompts):
        raise NotImplementedError

    def encode_image(self, images, prompts):
        return self.image_encoder(images)

    def text_features(self):
        """Normalised class text features (C, E)."""
        return F.normalize(self.encode_text(self.prompts()).float(), dim=-1)

    def features(self, images, text_features=None):
        """Normalised image (B, E) and class text (C, E) features; given text features are used as they are."""
        prompts = self.prompts()
        image_features = F.normalize(self.encode_image(images, prompts).float(), dim=-1)
        if text_features is None:
            text_features = F.normalize(self.encode_text(prompts).float(), dim=-1)
        return image_features, text_features

    def forward(self, images, text_features=None):
        image_features, text_features = self.features(images, text_features)
        return self.logit_scale * image_features @ text_features.t()

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]


class DeepPromptedCLIP(PromptedCLIP):
    """CLIP with deep prompts in both towers, produced by ``self.prompt_learner``.

    The learner returns {"text": (C, 77, D) embeddings with the shallow text prompt after SOS,
    "text_deep": (D-1, n, d_t), "visual": (n, d_v) appended after the patches, "visual_deep":
    (D-1, n, d_v)} and has ``classes`` (ClassPrompts) and ``n_ctx``. Deep text prompts replace
    the n slots after SOS, deep visual prompts the last n tokens, before blocks 1..D-1.
    """

    def prompts(self):
        return self.prompt_learner()

    def encode_text(self, prompts):
        hook = deep_prompt_hook(prompts["text_deep"], start=1)
        return self.text_encoder(prompts["text"], self.prompt_learner.classes.eot_index, hook=hook)

    def encode_image(self, images, prompts):
        hook = deep_prompt_hook(prompts["visual_deep"], start=-self.prompt_learner.n_ctx)
        return self.image_encoder(images, prompts["visual"], hook=hook)
