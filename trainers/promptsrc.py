"""PromptSRC: self-regulating prompts (Khattak et al., ICCV 2023).

IVLP's independent deep prompts in both encoders, regulated by the frozen CLIP:
- loss = CE + TEXT_LOSS_WEIGHT * L1(t, t0) + IMAGE_LOSS_WEIGHT * L1(f, f0) + LOGIT_LOSS_WEIGHT * KL(p0 || p),
  with t, f the prompted normalised features, t0 the frozen text features averaged over 60
  templates (textual diversity), f0 the frozen image features and p0, p the two softmaxes; the KL
  is summed and divided by B * C, as released;
- Gaussian prompt aggregation (GPA): the prompts of epoch e get weight N(e; GPA_MEAN, GPA_STD),
  normalised over the epochs; after the last epoch the weighted sum replaces the prompts, so it
  is what the last checkpoint holds and what is evaluated.

t0 is computed once per run (on first use). f0 needs a second pass of the image encoder: the
visual prompts enter at the first layer and change every token, so no prompted pass contains the
frozen features. The pass reuses the same frozen weights (the released code loads a second CLIP).
"""
import math

import torch
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY

from .clip_prompting import PromptTuningTrainer, clean_classname
from .ivlp import IVLPCLIP

# The released teacher templates (CLIP's ImageNet prompt-engineering list, in the released order).
TEACHER_TEMPLATES = (
    "a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.",
    "the embroidered {}.", "a photo of a hard to see {}.", "a bright photo of a {}.", "a photo of a clean {}.",
    "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.",
    "the plastic {}.", "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.",
    "a bright photo of the {}.", "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.",
    "a close-up photo of the {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.",
    "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.", "the toy {}.",
    "a rendition of the {}.", "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.",
    "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.",
    "a sketch of the {}.", "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.",
)
AGGREGATION_KEY = "prompt_aggregation"  # checkpoint entry (beside state_dict) that lets a run resume exactly


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN
    cfg.TRAINER.PROMPTSRC = CN()
    cfg.TRAINER.PROMPTSRC.N_CTX_TEXT = 4
    cfg.TRAINER.PROMPTSRC.N_CTX_VISION = 4
    cfg.TRAINER.PROMPTSRC.CTX_INIT = "a photo of a"
    cfg.TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT = 9
    cfg.TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION = 9
    cfg.TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT = 25  # integers, as released, so the released YAML files merge
    cfg.TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT = 10
    cfg.TRAINER.PROMPTSRC.LOGIT_LOSS_WEIGHT = 1  # fixed to 1 in the released code
    cfg.TRAINER.PROMPTSRC.GPA_MEAN = 15
    cfg.TRAINER.PROMPTSRC.GPA_STD = 1
    cfg.TRAINER.PROMPTSRC.PREC = "fp32"


@torch.no_grad()
def template_ensemble_features(text_encoder, classnames, templates):
    """Class features (C, E) averaged over templates, then normalised (PromptSRC's frozen text features)."""
    names = [clean_classname(c) for c in classnames]
    total = 0
    for template in templates:
        ids = text_encoder.tokenize([template.format(name) for name in names])
        total = total + text_encoder.encode_ids(ids).float()
    return F.normalize(total / len(templates), dim=-1)


def gaussian_weights(mean, std, epochs):
    """GPA weights of epochs 1..E: the N(mean, std) density at each epoch, normalised to sum to 1."""
    density = [math.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
               for e in range(1, epochs + 1)]
    total = sum(density)
    if not total > 0:
        raise ValueError(f"TRAINER.PROMPTSRC: GPA_MEAN {mean} and GPA_STD {std} give every one of the {epochs} "
                         "epochs a weight of 0; put GPA_MEAN within the epochs or widen GPA_STD.")
    return [d / total for d in density]


class PromptAggregation:
    """The running sum over epochs of w_e * (trainable tensors after epoch e)."""

    def __init__(self, module, weights):
        self.params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        self.weights = weights
        self.sum = None

    @torch.no_grad()
    def add(self, epoch):
        """Add the tensors as they are after ``epoch`` (0-based) with that epoch's weight."""
        weight = self.weights[epoch]
        if self.sum is None:
            self.sum = {n: p.detach() * weight for n, p in self.params.items()}
        else:
            for n, p in self.params.items():
                self.sum[n] += p.detach() * weight

    @torch.no_grad()
    def apply(self):
        """Replace the tensors by the weighted sum."""
        for n, p in self.params.items():
            p.copy_(self.sum[n])

    def state_dict(self):
        return self.sum

    def load_state_dict(self, state):
        self.sum = None if state is None else {n: state[n].to(p.device) for n, p in self.params.items()}


class PromptSRCCLIP(IVLPCLIP):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__(cfg, classnames, clip_model, node="PROMPTSRC")
        self.classnames = list(classnames)
        self.register_buffer("frozen_text", None, persistent=False)

    def frozen_text_features(self):
        """The frozen CLIP's class features over the teacher templates, computed once."""
        if self.frozen_text is None:
            self.frozen_text = template_ensemble_features(self.text_encoder, self.classnames, TEACHER_TEMPLATES)
        return self.frozen_text

    @torch.no_grad()
    def frozen_image_features(self, images):
        """The frozen CLIP's normalised image features: the image encoder without prompts."""
        return F.normalize(self.image_encoder(images).float(), dim=-1)


def self_regulating_loss(c, logits, label, text, image, frozen_text, frozen_image, frozen_logits):
    """CE plus PromptSRC's three consistency terms with the frozen CLIP, weighted as configured."""
    consistency = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(frozen_logits, dim=1),
                           reduction="sum", log_target=True) / logits.numel()
    return (F.cross_entropy(logits, label)
            + c.TEXT_LOSS_WEIGHT * F.l1_loss(text, frozen_text)
            + c.IMAGE_LOSS_WEIGHT * F.l1_loss(image, frozen_image)
            + getattr(c, "LOGIT_LOSS_WEIGHT", 1.0) * consistency)


@TRAINER_REGISTRY.register()
class PromptSRC(PromptTuningTrainer):
    cfg_node = "PROMPTSRC"
    model_name = "VLPromptLearner"  # the released checkpoint folder name
    learnable_attr = "prompt_learner"

    def check_cfg(self, cfg):
        c = cfg.TRAINER.PROMPTSRC
        if c.PROMPT_DEPTH_TEXT < 1:
            raise ValueError(f"TRAINER.PROMPTSRC: PROMPT_DEPTH_TEXT is {c.PROMPT_DEPTH_TEXT}; PromptSRC needs text "
                             "prompts (depth >= 1). For visual prompts only, use the VPT trainer.")
        if c.GPA_STD <= 0:
            raise ValueError(f"TRAINER.PROMPTSRC: GPA_STD is {c.GPA_STD}; the Gaussian over epochs needs a "
                             "positive standard deviation.")
        super().check_cfg(cfg)

    def build_custom_clip(self, cfg, classnames, clip_model):
        return PromptSRCCLIP(cfg, classnames, clip_model)

    def build_model(self):
        super().build_model()
        c = self.method_cfg
        weights = gaussian_weights(c.GPA_MEAN, c.GPA_STD, self.max_epoch)
        print(f"Gaussian prompt aggregation over {self.max_epoch} epochs: weights "
              f"{', '.join(f'{w:.4f}' for w in weights)}")
        self.aggregation = PromptAggregation(self.learnable_module(), weights)

    def compute_loss(self, image, label):
        model = self.model
        image_features, text_features = model.features(image)
        logits = model.logits(image_features, text_features)
        with torch.autocast(self.device.type, enabled=False):
            frozen_text = model.frozen_text_features()
        frozen_image = model.frozen_image_features(image)
        frozen_logits = model.logits(frozen_image, frozen_text)
        loss = self_regulating_loss(self.method_cfg, logits, label, text_features, image_features,
                                    frozen_text, frozen_image, frozen_logits)
        return loss, logits

    def after_epoch(self):
        self.aggregation.add(self.epoch)
        if (self.epoch + 1) == self.max_epoch:
            print("Using GPA model for final inference...")
            self.aggregation.apply()
        super().after_epoch()  # saves (after the last epoch: the aggregated prompts)

    # -- exact resume: the running sum travels in the checkpoint, beside state_dict --------
    def training_state(self):
        state = super().training_state()
        state[AGGREGATION_KEY] = self.aggregation.state_dict()
        return state

    def load_training_state(self, state, source="The checkpoint"):
        super().load_training_state(state, source)
        if AGGREGATION_KEY not in state:
            raise RuntimeError(f"{source} holds no Gaussian prompt aggregation state, so PromptSRC "
                               "cannot resume from it exactly; start the run afresh in a new output folder.")
        self.aggregation.load_state_dict(state[AGGREGATION_KEY])
