"""CoPrompt: consistency-guided prompt learning (Roy and Etemad, ICLR 2024).

MaPLe's coupled prompts (text prompts in layers 1..PROMPT_DEPTH, each layer's visual prompt a
linear projection of its text prompt) plus one adapter on each encoder's output, trained with
cross-entropy and a consistency loss against the frozen CLIP:

- Adapters act on the projected features, before the L2 norm, in training and evaluation alike:
  f <- r * A(f) + (1 - r) * f with A = ReLU(up(ReLU(down(f)))), down E -> E / ADAPTER_REDUCTION and
  up back to E, both without bias; r = IMAGE_ADAPTER_RATIO (0.1) for the image, TEXT_ADAPTER_RATIO
  (0.2) for the text, as released.
- loss = CE + W * (L(t, d) + L(f, f0)). t: the prompted class features; d: the frozen text features
  of one LLM description per class; f: the prompted features of the training image; f0: the frozen
  image features of a second augmented view of it. L (DISTILL): "cosine", 1 - the mean cosine
  similarity of matching rows; or "mse", the mean squared error of the normalised features.
- Descriptions come from DATASET.DESCRIPTIONS (or the synthetic benchmark's own) and are encoded
  once by the frozen text encoder, on first use. Each step picks one per class: DESCRIPTION_PICK
  "shared" draws one index for all classes, as released (every class then needs as many
  sentences); "per_class" draws one for each class. The released code draws with Python's
  ``random``, whose stream also serves the few-shot sampling, so it differs between a run that
  samples the few-shot split and one that reads it from its cache; here the draw comes from
  torch's global (CPU) RNG, so a seed gives the same picks either way, and resume restores it.
- The second view is the engine's: with DATALOADER.K_TRANSFORMS 2 the data loader applies the
  training transform (RandAugment in the released config) twice to each image, so a batch holds
  two independently augmented views. Both draws come from the global RNG, which a resumed run
  restores, so resuming stays bitwise exact; the frozen pass on the second view reuses the frozen
  weights (the released code loads a second CLIP for it).

The released code sets N_CTX, PROMPT_DEPTH, W (and Food101's epochs) per dataset after reading the
command line; here each dataset has its own config with those values (scripts/coprompt/method.sh
picks it), and command-line options still apply.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY

from .clip_prompting import DeepPromptedCLIP, PromptTuningTrainer
from .maple import MaPLePromptLearner
from datasets.descriptions import class_descriptions

DISTANCES = ("cosine", "mse")
PICKS = ("shared", "per_class")
DESCRIPTION_BATCH = 256  # sentences per pass of the frozen text encoder when encoding descriptions


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN  # as CoOp: the original dassl.config exports no CfgNode
    cfg.TRAINER.COPROMPT = CN()
    cfg.TRAINER.COPROMPT.N_CTX = 2
    cfg.TRAINER.COPROMPT.CTX_INIT = "a photo of a"
    cfg.TRAINER.COPROMPT.PROMPT_DEPTH = 9
    cfg.TRAINER.COPROMPT.W = 1.0  # weight of the consistency loss (released TRAINER.W)
    cfg.TRAINER.COPROMPT.DISTILL = "cosine"  # released TRAINER.DISTILL: cosine or mse
    cfg.TRAINER.COPROMPT.IMAGE_ADAPTER_RATIO = 0.1
    cfg.TRAINER.COPROMPT.TEXT_ADAPTER_RATIO = 0.2
    cfg.TRAINER.COPROMPT.ADAPTER_REDUCTION = 4
    cfg.TRAINER.COPROMPT.DESCRIPTION_PICK = "shared"  # released: one description index for all classes
    cfg.TRAINER.COPROMPT.PREC = "fp32"


def check_coprompt_cfg(c, embed_dim):
    def fail(msg):
        raise ValueError(f"TRAINER.COPROMPT: {msg}")
    if c.W < 0:
        fail(f"W is {c.W}; the weight of the consistency loss must be 0 or more.")
    if c.DISTILL not in DISTANCES:
        fail(f'DISTILL is "{c.DISTILL}"; use cosine (the released setting) or mse.')
    for key in ("IMAGE_ADAPTER_RATIO", "TEXT_ADAPTER_RATIO"):
        if not 0 <= c[key] <= 1:
            fail(f"{key} is {c[key]}; the adapter's share of the features must be between 0 and 1.")
    if not 1 <= c.ADAPTER_REDUCTION <= embed_dim:
        fail(f"ADAPTER_REDUCTION is {c.ADAPTER_REDUCTION}; the adapters' hidden width is the feature width "
             f"({embed_dim}) divided by it, so use 1 to {embed_dim}.")
    if c.DESCRIPTION_PICK not in PICKS:
        fail(f'DESCRIPTION_PICK is "{c.DESCRIPTION_PICK}"; use shared (one description index for every class '
             "per step, as released) or per_class (one drawn for each class).")


class FeatureAdapter(nn.Module):
    """f -> ratio * A(f) + (1 - ratio) * f, A = ReLU . up . ReLU . down without biases (released ``Adapter``)."""

    def __init__(self, width, reduction, ratio):
        super().__init__()
        hidden = width // reduction
        self.fc = nn.Sequential(nn.Linear(width, hidden, bias=False), nn.ReLU(),
                                nn.Linear(hidden, width, bias=False), nn.ReLU())
        self.ratio = float(ratio)

    def forward(self, x):
        x = x.to(self.fc[0].weight.dtype)  # features of an fp16 CLIP meet fp32 adapters
        return self.ratio * self.fc(x) + (1.0 - self.ratio) * x


class CoPromptLearner(MaPLePromptLearner):
    """Every learnable tensor of CoPrompt: MaPLe's prompts, then the image and text adapters
    (created in the released order, so a seed gives the released initial values)."""

    def __init__(self, cfg, classnames, text_encoder, image_encoder, embed_dim):
        super().__init__(cfg, classnames, text_encoder, image_encoder, node="COPROMPT")
        c = cfg.TRAINER.COPROMPT
        self.adapter_image = FeatureAdapter(embed_dim, c.ADAPTER_REDUCTION, c.IMAGE_ADAPTER_RATIO)
        self.adapter_text = FeatureAdapter(embed_dim, c.ADAPTER_REDUCTION, c.TEXT_ADAPTER_RATIO)


@torch.no_grad()
def description_features(text_encoder, sentences, source, normalise):
    """Frozen features (N, E) of every sentence, class after class, L2-normalised by ``normalise``."""
    flat = [s for group in sentences for s in group]
    features = []
    for start in range(0, len(flat), DESCRIPTION_BATCH):
        try:
            ids = text_encoder.tokenize(flat[start:start + DESCRIPTION_BATCH])
        except RuntimeError as exc:  # OpenAI's tokenizer refuses a text longer than its context
            raise ValueError(f"A class description in {source} is too long for the text encoder ({exc}). "
                             "Shorten it, or pass another file with DATASET.DESCRIPTIONS.") from None
        features.append(normalise(text_encoder.encode_ids(ids)))
    return torch.cat(features)


class CoPromptCLIP(DeepPromptedCLIP):
    """``with_descriptions`` False: a model for inference on given classes, which needs no descriptions."""

    def __init__(self, cfg, classnames, clip_model, with_descriptions=True):
        super().__init__(clip_model)
        c = cfg.TRAINER.COPROMPT
        check_coprompt_cfg(c, self.embed_dim)
        self.prompt_learner = CoPromptLearner(cfg, classnames, self.text_encoder, self.image_encoder,
                                              self.embed_dim)
        self.pick = c.DESCRIPTION_PICK
        self.descriptions = None
        self.register_buffer("described", None, persistent=False)  # frozen features of every sentence
        if with_descriptions:
            self.descriptions = class_descriptions(cfg, classnames)
            counts = [len(s) for s in self.descriptions.sentences]
            if self.pick == "shared" and len(set(counts)) > 1:
                fewest = min(range(len(counts)), key=counts.__getitem__)
                raise ValueError(
                    f"TRAINER.COPROMPT: DESCRIPTION_PICK shared (as released: one description index for every "
                    f"class per step) needs the same number of descriptions for every class, but "
                    f"{self.descriptions.source} has {min(counts)} to {max(counts)} per class (\"{classnames[fewest]}\""
                    f": {counts[fewest]}). Give every class as many, or set TRAINER.COPROMPT.DESCRIPTION_PICK "
                    "per_class (one drawn for each class).")
            self.counts = torch.tensor(counts)
            self.offsets = self.counts.cumsum(0) - self.counts
            print(f"Class descriptions: {sum(counts)} sentences for {len(counts)} classes from "
                  f"{self.descriptions.source}; one per class per step ({self.pick})")

    def encode_text(self, prompts):
        return self.prompt_learner.adapter_text(super().encode_text(prompts))

    def encode_image(self, images, prompts):
        return self.prompt_learner.adapter_image(super().encode_image(images, prompts))

    def description_rows(self):
        """This step's description of each class: rows (C,) of ``described``, from torch's global CPU RNG."""
        if self.pick == "shared":
            return self.offsets + torch.randint(int(self.counts[0]), ())
        # floor(u * n) is uniform on 0..n-1; float64 keeps u * n below n
        drawn = (torch.rand(len(self.counts), dtype=torch.float64) * self.counts).floor().long()
        return self.offsets + torch.minimum(drawn, self.counts - 1)

    def described_class_features(self):
        """(C, E): the frozen features of one description per class, picked for this step."""
        if self.descriptions is None:
            raise RuntimeError("This CoPrompt model was built without class descriptions (for inference), so it "
                               "cannot compute its training loss; build it with with_descriptions=True.")
        if self.described is None:
            self.described = description_features(self.text_encoder, self.descriptions.sentences,
                                                  self.descriptions.source, self.normalise)
        return self.described[self.description_rows().to(self.described.device)]

    @torch.no_grad()
    def frozen_image_features(self, images):
        """The frozen CLIP's normalised image features: the image encoder without prompts or adapter."""
        return self.normalise(self.image_encoder(images))


def consistency(distance, prompted, frozen):
    """CoPrompt's distance between matching rows of prompted and frozen (both L2-normalised) features."""
    if distance == "cosine":
        return 1.0 - F.cosine_similarity(prompted, frozen, dim=1, eps=1e-7).mean()
    return F.mse_loss(prompted, frozen)


@TRAINER_REGISTRY.register()
class CoPrompt(PromptTuningTrainer):
    cfg_node = "COPROMPT"
    model_name = "MultiModalPromptLearner"  # the released checkpoint folder name
    learnable_attr = "prompt_learner"
    # released fp16: ctx (a slice of the fp16 token embedding), proj and both adapters are fp16; the deep
    # prompts and their projections stay fp32
    reference_half = ("ctx", "proj", "adapter_image", "adapter_text")

    def check_cfg(self, cfg):
        views = cfg.DATALOADER.K_TRANSFORMS
        if views != 2 and self._given_classnames is None:  # inference on given class names trains nothing
            raise ValueError(f"CoPrompt compares the prompted features of each training image with the frozen "
                             f"features of a second augmented view of it, so it needs DATALOADER.K_TRANSFORMS 2 "
                             f"(got {views}); its configs set it.")
        super().check_cfg(cfg)

    def build_custom_clip(self, cfg, classnames, clip_model):
        # inference on given class names (predict.py) trains nothing, so it reads no descriptions
        return CoPromptCLIP(cfg, classnames, clip_model, with_descriptions=self._given_classnames is None)

    def parse_batch_train(self, batch):
        views = batch["img"]
        if not isinstance(views, (list, tuple)) or len(views) != 2:
            raise ValueError("CoPrompt's training batches must hold two augmented views of each image "
                             "(DATALOADER.K_TRANSFORMS 2).")
        return tuple(v.to(self.device) for v in views), batch["label"].to(self.device)

    def compute_loss(self, image, label):
        """``image``: the two views (the first is classified, the second meets the frozen encoder), or one
        batch of images that serves as both."""
        image, view = image if isinstance(image, (list, tuple)) else (image, image)
        model, c = self.model, self.method_cfg
        image_features, text_features = model.features(image)
        logits = model.logits(image_features, text_features)
        with torch.autocast(self.device.type, enabled=False):
            described = model.described_class_features()
        frozen_image = model.frozen_image_features(view)
        distance = consistency(c.DISTILL, text_features, described) + consistency(c.DISTILL, image_features,
                                                                                  frozen_image)
        return F.cross_entropy(self.loss_logits(logits), label) + c.W * distance, logits
