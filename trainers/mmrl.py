"""MMRL: multi-modal representation learning (Guo and Gu, CVPR 2025), and MMRL++ (IJCV 2026).

Frozen CLIP with the dataset's hand-written prompt (no learned text context) and a shared space of
N_REP_TOKENS learnable tokens (REP_DIM wide). Before each layer of REP_LAYERS (counted from 1:
layer l is block l-1) a per-layer linear map sends the space tokens into both encoders as
representation tokens:
- text: inserted right after SOS at the first of those layers (the sequence grows by N tokens, the
  causal mask covers the longer sequence, the pooled EOT moves N places), then written over at the
  later ones. They carry no position embedding, as released.
- image: inserted at the first of those layers where the tower places prompt tokens (after the
  patches in OpenAI's ViT; the released code puts them after CLS, which computes the same function:
  the tokens carry no position embedding and attention does not depend on token order), then
  written over.
The class-token feature keeps CLIP's frozen projection; the representation feature is the tower's
final norm on each representation token, averaged, times a trainable ``proj_rep`` (width x E,
N(0, 1/width)). Both are scored against the one set of text features (the representation-token text
pass), with CLIP's logit scale.

Loss (released): ALPHA * CE(class-token logits) + (1 - ALPHA) * CE(representation logits)
+ REG_WEIGHT * (1 - cos(f, f0)) + REG_WEIGHT * (1 - cos(t, t0)), the cosines averaged over the batch
and the classes; f0 and t0 are the frozen CLIP's image features and its text features of the same
prompts (computed once, on first use).

Inference (TEST_LOGITS): "fused" scores with ALPHA * class-token + (1 - ALPHA) * representation
logits, "class_token" with the class-token logits alone. "auto" (default) fuses on the classes the
representation head was trained on and uses the class-token logits on any others: the released
rule (base-to-new: fused on base, class-token on new; few-shot: fused; cross-dataset: fused on
ImageNet, class-token on the other datasets and on ImageNet's variants). The learner's checkpoint
holds a fingerprint of the training dataset's name and class list (``trained_on``) to decide it.

MMRL++ (VARIANT "mmrlpp"): each encoder's per-layer maps share one weight W, plus per layer a
rank-RES_LORA_DIM residual A_l B_l (A Kaiming-uniform, B zero) and a bias of its own, all trained;
from the second representation layer on, the slots take BETA * mapped tokens + (1 - BETA) * the
previous layer's outputs there; ``proj_rep`` is CLIP's frozen image projection plus a trainable
rank-PROJ_LORA_DIM update.

The released code sets REG_WEIGHT (and EuroSAT's REP_DIM) per dataset, and for MMRL++ BETA and
REG_WEIGHT per dataset and protocol, in a table merged after the config file. DATASET_TABLE names
the table to use here ("base2new": base-to-new and few-shot; "cross_dataset": MMRL++'s cross-dataset
table, which also sets BETA per target dataset at test time; empty: the config's values); the values
it sets are written into the run's config and override that config's (and the command line's) values.
"""
import copy
import hashlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY

from .clip_prompting import PromptedCLIP, PromptTuningTrainer, clean_classname, splice, template_text_features
from datasets.templates import dataset_template

VARIANTS = ("mmrl", "mmrlpp")
TEST_LOGITS = ("auto", "fused", "class_token")

# The released per-dataset settings (its trainers/config.py). MMRL: one table for every protocol.
MMRL_TABLE = {
    "StanfordCars": {"REG_WEIGHT": 7.0}, "FGVCAircraft": {"REG_WEIGHT": 6.0}, "SUN397": {"REG_WEIGHT": 6.0},
    "DescribableTextures": {"REG_WEIGHT": 6.0}, "Food101": {"REG_WEIGHT": 5.0}, "OxfordFlowers": {"REG_WEIGHT": 4.0},
    "UCF101": {"REG_WEIGHT": 3.0}, "ImageNet": {"REG_WEIGHT": 0.5}, "Caltech101": {"REG_WEIGHT": 0.5},
    "OxfordPets": {"REG_WEIGHT": 0.2}, "EuroSAT": {"REG_WEIGHT": 0.01, "REP_DIM": 2048},
}
# MMRL++: (BETA, REG_WEIGHT) for base-to-new and few-shot; BETA (and ImageNet's REG_WEIGHT) for
# cross-dataset transfer, where the target dataset's BETA applies when testing on it.
MMRLPP_TABLES = {
    "base2new": {name: {"BETA": beta, "REG_WEIGHT": weight} for name, (beta, weight) in {
        "ImageNet": (0.9, 0.2), "FGVCAircraft": (0.9, 2.0), "UCF101": (0.9, 3.0), "DescribableTextures": (0.9, 7.0),
        "OxfordPets": (0.7, 0.01), "StanfordCars": (0.7, 6.0), "Caltech101": (0.6, 3.0), "SUN397": (0.5, 3.0),
        "OxfordFlowers": (0.4, 7.0), "EuroSAT": (0.2, 0.01), "Food101": (0.1, 1.0)}.items()},
    "cross_dataset": dict({"ImageNet": {"BETA": 0.9, "REG_WEIGHT": 0.1}}, **{name: {"BETA": beta} for name, beta in {
        "ImageNetV2": 0.9, "ImageNetR": 0.9, "ImageNetA": 0.8, "ImageNetSketch": 0.7, "FGVCAircraft": 0.9,
        "UCF101": 0.9, "SUN397": 0.7, "OxfordPets": 0.6, "Caltech101": 0.6, "DescribableTextures": 0.5,
        "OxfordFlowers": 0.4, "StanfordCars": 0.3, "EuroSAT": 0.3, "Food101": 0.3}.items()}),
}
DATASET_TABLES = ("", "base2new", "cross_dataset")


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN  # as CoOp: the original dassl.config exports no CfgNode
    cfg.TRAINER.MMRL = CN()
    cfg.TRAINER.MMRL.VARIANT = "mmrl"  # mmrl, or mmrlpp (MMRL++)
    cfg.TRAINER.MMRL.N_REP_TOKENS = 5
    cfg.TRAINER.MMRL.REP_DIM = 512  # width of the shared representation space
    cfg.TRAINER.MMRL.REP_LAYERS = [6, 7, 8, 9, 10, 11, 12]
    cfg.TRAINER.MMRL.ALPHA = 0.7  # class-token share of the loss and of the fused logits
    cfg.TRAINER.MMRL.REG_WEIGHT = 1.0
    cfg.TRAINER.MMRL.BETA = 0.9  # MMRL++: share of the newly mapped tokens from the second layer on
    cfg.TRAINER.MMRL.PROJ_LORA_DIM = 64  # MMRL++: rank of proj_rep's update of the frozen projection
    cfg.TRAINER.MMRL.RES_LORA_DIM = 4  # MMRL++: rank of each layer's residual on the shared map
    cfg.TRAINER.MMRL.DATASET_TABLE = ""  # "", base2new or cross_dataset: the released per-dataset values
    cfg.TRAINER.MMRL.TEST_LOGITS = "auto"  # auto, fused or class_token
    cfg.TRAINER.MMRL.PREC = "fp32"


def dataset_settings(c, dataset):
    """The values DATASET_TABLE sets for ``dataset`` ({} when no table is used or it lists no values)."""
    if not c.DATASET_TABLE:
        return {}
    if c.VARIANT == "mmrl":  # the released MMRL table does not depend on the protocol
        return dict(MMRL_TABLE.get(dataset, {}))
    return dict(MMRLPP_TABLES[c.DATASET_TABLE].get(dataset, {}))


def effective_settings(cfg):
    """TRAINER.MMRL with the values of its DATASET_TABLE for DATASET.NAME in place."""
    c = cfg.TRAINER.MMRL.clone()
    c.defrost()
    for key, value in dataset_settings(check_mmrl_keys(c), cfg.DATASET.NAME).items():
        c[key] = value
    return c


def check_mmrl_keys(c):
    """The checks that need no model; returns ``c``."""
    def fail(msg):
        raise ValueError(f"TRAINER.MMRL: {msg}")
    if c.VARIANT not in VARIANTS:
        fail(f'VARIANT is "{c.VARIANT}"; use mmrl (MMRL) or mmrlpp (MMRL++).')
    if c.DATASET_TABLE not in DATASET_TABLES:
        fail(f'DATASET_TABLE is "{c.DATASET_TABLE}"; use base2new (the released base-to-new and few-shot values), '
             'cross_dataset (MMRL++\'s cross-dataset values), or "" (the config\'s values).')
    if c.TEST_LOGITS not in TEST_LOGITS:
        fail(f'TEST_LOGITS is "{c.TEST_LOGITS}"; use auto (fused on the trained classes, class-token logits on '
             "others), fused or class_token.")
    for key in ("N_REP_TOKENS", "REP_DIM") + (("PROJ_LORA_DIM", "RES_LORA_DIM") if c.VARIANT == "mmrlpp" else ()):
        if not isinstance(c[key], int) or c[key] < 1:
            fail(f"{key} is {c[key]!r}; it must be a whole number of at least 1.")
    for key in ("ALPHA",) + (("BETA",) if c.VARIANT == "mmrlpp" else ()):
        if not 0 <= c[key] <= 1:
            fail(f"{key} is {c[key]}; it is a share, between 0 and 1.")
    if c.REG_WEIGHT < 0:
        fail(f"REG_WEIGHT is {c.REG_WEIGHT}; the weight of the distances to zero-shot CLIP must be 0 or more.")
    layers = list(c.REP_LAYERS)
    if not layers or not all(isinstance(l, int) and not isinstance(l, bool) for l in layers) \
            or any(b <= a for a, b in zip(layers, layers[1:])) or layers[0] < 1:
        fail(f"REP_LAYERS is {layers}; give the layers that receive representation tokens as increasing "
             "whole numbers from 1 (layer l is block l-1), e.g. [6, 7, 8, 9, 10, 11, 12] as released.")
    return c


def fingerprint(dataset, classnames):
    """A 64-bit fingerprint of a dataset name and its class list, as a signed integer."""
    text = "\n".join([dataset, *classnames]).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big", signed=True)


class ResidualAligner(nn.Module):
    """One layer of MMRL++'s shared map: x -> x (W + A B)^T + bias, W shared by the layers."""

    def __init__(self, bias, width, rep_dim, rank):
        super().__init__()
        self.A = nn.Parameter(torch.empty(width, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(rank, rep_dim))
        self.bias = nn.Parameter(bias.detach().clone())

    def forward(self, x, weight):
        return F.linear(x, weight + self.A @ self.B, self.bias)


class SharedResidualAligner(nn.Module):
    """MMRL++'s map of the space tokens into one encoder: a shared weight and one aligner per layer,
    all starting from one Linear's weight and bias (released names)."""

    def __init__(self, rep_dim, width, layers, rank):
        super().__init__()
        base = nn.Linear(rep_dim, width)
        self.weight = nn.Parameter(base.weight.detach().clone())
        self.srra = nn.ModuleList([ResidualAligner(base.bias, width, rep_dim, rank) for _ in range(layers)])

    def forward(self, x, layer):
        return self.srra[layer](x, self.weight)


class RepresentationLearner(nn.Module):
    """Every trained tensor of MMRL / MMRL++ (released names), and the fingerprint of the classes trained on.

    ``forward()`` -> (text tokens, visual tokens): one (N_REP_TOKENS, width) set per representation layer.
    """

    def __init__(self, c, text_width, vision_width, embed_dim):
        super().__init__()
        self.variant = c.VARIANT
        layers = len(c.REP_LAYERS)
        self.compound_rep_tokens = nn.Parameter(nn.init.normal_(torch.empty(c.N_REP_TOKENS, c.REP_DIM), std=0.02))
        if self.variant == "mmrl":
            # released: the per-layer maps are copies of one Linear, so they start equal
            r2v, r2t = nn.Linear(c.REP_DIM, vision_width), nn.Linear(c.REP_DIM, text_width)
            self.compound_rep_tokens_r2vproj = nn.ModuleList([copy.deepcopy(r2v) for _ in range(layers)])
            self.compound_rep_tokens_r2tproj = nn.ModuleList([copy.deepcopy(r2t) for _ in range(layers)])
            self.proj_rep = nn.Parameter(vision_width ** -0.5 * torch.randn(vision_width, embed_dim))
        else:
            self.srra_r2vproj = SharedResidualAligner(c.REP_DIM, vision_width, layers, c.RES_LORA_DIM)
            self.srra_r2tproj = SharedResidualAligner(c.REP_DIM, text_width, layers, c.RES_LORA_DIM)
            self.proj_rep_A = nn.Parameter(torch.empty(vision_width, c.PROJ_LORA_DIM))
            nn.init.kaiming_uniform_(self.proj_rep_A, a=math.sqrt(5))
            self.proj_rep_B = nn.Parameter(torch.zeros(c.PROJ_LORA_DIM, embed_dim))
        self.layers = layers
        # saved with the weights: the test logits follow whether the classes tested are these
        self.register_buffer("trained_on", torch.zeros((), dtype=torch.int64))

    def forward(self):
        tokens = self.compound_rep_tokens
        if self.variant == "mmrl":
            return ([self.compound_rep_tokens_r2tproj[i](tokens) for i in range(self.layers)],
                    [self.compound_rep_tokens_r2vproj[i](tokens) for i in range(self.layers)])
        return ([self.srra_r2tproj(tokens, i) for i in range(self.layers)],
                [self.srra_r2vproj(tokens, i) for i in range(self.layers)])


class RepresentationTokens:
    """Before-block hook: representation tokens into a tower, one (n, d) set per representation layer.

    Before the first such layer ``insert(x, tokens)`` adds them; before each later one they replace
    the n slots from ``start`` (``beta`` < 1, MMRL++: beta * tokens + (1 - beta) * what is there).
    """

    def __init__(self, tokens, layers, insert, start, beta=None):
        self.by_block = {layer - 1: t for layer, t in zip(layers, tokens)}
        self.first = layers[0] - 1
        self.insert, self.start, self.beta = insert, start, beta

    def __call__(self, index, x):
        tokens = self.by_block.get(index)
        if tokens is None:
            return x
        tokens = tokens.to(x.dtype).expand(x.shape[0], -1, -1)
        if index == self.first:
            return self.insert(x, tokens)
        if self.beta is not None:
            start = self.start % x.shape[1]
            tokens = self.beta * tokens + (1 - self.beta) * x[:, start:start + tokens.shape[1]]
        return splice(x, tokens, self.start)

    def rows(self, selection):
        """The hook for a chunk of the text pass: the tokens are the same for every sequence."""
        return self


class FinalStates:
    """After-block callback that keeps the states of ``n`` slots from ``start`` after the last block."""

    def __init__(self, last, start, n):
        self.last, self.start, self.n = last, start, n
        self.states = None

    def __call__(self, index, x_in, x_out):
        if index == self.last:
            start = self.start % x_out.shape[1]
            self.states = x_out[:, start:start + self.n]
        return x_out


class MMRLCLIP(PromptedCLIP):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        c = self.settings = effective_settings(cfg)
        self.image_encoder.require_vit("TRAINER.MMRL", cfg.MODEL.BACKBONE.NAME)
        text, image = self.text_encoder, self.image_encoder
        layers = min(text.num_layers, image.num_layers)
        if c.REP_LAYERS[-1] > layers:
            raise ValueError(f"TRAINER.MMRL: REP_LAYERS {list(c.REP_LAYERS)} goes past this CLIP's {layers} layers; "
                             f"use layers 1 to {layers}.")
        self.check_representation_head()
        self.variant, self.n_rep = c.VARIANT, c.N_REP_TOKENS
        self.rep_layers, self.alpha = list(c.REP_LAYERS), float(c.ALPHA)
        self.beta = float(c.BETA) if c.VARIANT == "mmrlpp" else None
        self.classnames = list(classnames)
        self.template = dataset_template(cfg.DATASET.NAME)
        prompts = [self.template.format(clean_classname(name)) for name in classnames]
        print(f"Prompts: {prompts}")
        ids = text.tokenize(prompts)
        pool = text.pool_index(ids)
        self.register_buffer("tokenized_prompts", ids, persistent=False)
        self.register_buffer("prompt_embeddings", text.embed(ids), persistent=False)
        # the pooled token moves by the tokens inserted before it
        self.register_buffer("rep_pool_index", torch.where(pool >= text.prompt_start, pool + self.n_rep, pool),
                             persistent=False)
        # the fast path's cut, read before any pass (a model on the "meta" device has no values to read)
        self.text_length, self.context_length = int(pool.max()) + 1, ids.shape[1]
        self.register_buffer("zero_shot_text", None, persistent=False)
        self.representation_learner = RepresentationLearner(c, text.width, image.width, self.embed_dim)
        self.classes_fingerprint = fingerprint(cfg.DATASET.NAME, self.classnames)
        self.representation_learner.trained_on.fill_(self.classes_fingerprint)  # until a checkpoint says otherwise
        self.fused = c.TEST_LOGITS != "class_token"
        extra = f", beta {c.BETA}" if self.beta is not None else ""
        print(f"{'MMRL++' if self.beta is not None else 'MMRL'}: {c.N_REP_TOKENS} representation tokens "
              f"({c.REP_DIM} wide) in layers {self.rep_layers}, alpha {c.ALPHA}, reg weight {c.REG_WEIGHT}{extra}")

    def check_representation_head(self):
        tower, width = self.image_encoder.tower, self.image_encoder.width
        try:
            with torch.no_grad():
                tower.project(tower.token_norm(torch.zeros(1, 1, width, dtype=tower.dtype)).mean(1))
        except NotImplementedError as exc:
            raise ValueError(f"TRAINER.MMRL: the representation head needs the image tower's final norm on each "
                             f"token and its projection, which this image tower ({self.image_encoder.architecture}) "
                             f"does not offer ({exc}); "
                             "use an OpenAI, Hugging Face or OpenCLIP ViT (e.g. ViT-B/16).") from exc

    # -- the two towers ------------------------------------------------------------------------
    def prompts(self):
        return self.representation_learner()

    def encode_text(self, prompts):
        text = self.text_encoder
        reference = text.causal and not text.fast
        if reference and self.text_length + self.n_rep > self.context_length:
            raise ValueError(f"TRAINER.MMRL: the reference path runs the library's text blocks with their own "
                             f"{self.context_length}-token mask, so it drops {self.n_rep} padding tokens where the "
                             f"representation tokens go in; the longest class prompt ends at token "
                             f"{self.text_length} and would be cut. Use the fast path (the default).")
        start = text.prompt_start

        def insert(x, tokens):  # after SOS; the reference path keeps the library's context length
            end = x.shape[1] - tokens.shape[1] if reference else x.shape[1]
            return torch.cat([x[:, :start], tokens, x[:, start:end]], dim=1)
        hook = RepresentationTokens(prompts[0], self.rep_layers, insert, start, self.beta)
        embeddings = self.prompt_embeddings
        if text.causal and text.fast:
            embeddings = embeddings[:, :self.text_length]  # the cut, before the tokens go in
        return text(embeddings, self.rep_pool_index, hook=hook)

    def image_hook(self, prompts):
        image = self.image_encoder
        return RepresentationTokens(prompts[1], self.rep_layers, image.insert_prompts,
                                    image.prompt_start(self.n_rep), self.beta)

    def image_features(self, images, prompts, representation=True):
        """Normalised class-token features (B, E) and, if asked, representation features (B, E)."""
        image = self.image_encoder
        final = FinalStates(image.num_layers - 1, image.prompt_start(self.n_rep), self.n_rep)
        features = self.normalise(image(images, hook=self.image_hook(prompts), after=final))
        if not representation:
            return features, None
        return features, self.normalise(self.represent(final.states))

    def represent(self, states):
        """The representation feature: the tower's final norm on each token, their mean, then proj_rep
        (MMRL) or the frozen projection plus its low-rank update (MMRL++)."""
        tower, learner = self.image_encoder.tower, self.representation_learner
        x = tower.token_norm(states).mean(dim=1)
        if self.variant == "mmrl":
            return x @ learner.proj_rep.to(x.dtype)
        return tower.project(x) + (x @ learner.proj_rep_A.to(x.dtype)) @ learner.proj_rep_B.to(x.dtype)

    def encode_image(self, images, prompts):
        """Class-token image features (unnormalised)."""
        return self.image_encoder(images, hook=self.image_hook(prompts))

    # -- the contract: features, then CLIP's logits ------------------------------------------------
    def features(self, images, text_state=None):
        """The image features scored at test time: ALPHA * class-token + (1 - ALPHA) * representation
        features (``fused``; the logits are linear in them, so these give the fused logits), or the
        class-token features alone."""
        prompts = self.prompts()
        image, representation = self.image_features(images, prompts, representation=self.fused)
        if text_state is None:
            text_state = self.normalise(self.encode_text(prompts))
        if self.fused:
            image = self.alpha * image + (1 - self.alpha) * representation
        return image, text_state

    def outputs(self, images):
        """(class-token features, representation features, text features), all normalised: what the loss reads."""
        prompts = self.prompts()
        image, representation = self.image_features(images, prompts)
        return image, representation, self.normalise(self.encode_text(prompts))

    # -- the frozen CLIP -------------------------------------------------------------------------
    def zero_shot_text_features(self):
        """The frozen CLIP's normalised features (C, E) of the same prompts, computed once."""
        if self.zero_shot_text is None:
            self.zero_shot_text = template_text_features(self.text_encoder, self.classnames, self.template)
        return self.zero_shot_text

    @torch.no_grad()
    def zero_shot_image_features(self, images):
        return self.normalise(self.image_encoder(images))


def mmrl_loss(c, logits, logits_rep, label, image, text, zero_shot_image, zero_shot_text):
    """The released loss: the two cross-entropies mixed by ALPHA plus REG_WEIGHT times each distance
    (1 - mean cosine) to zero-shot CLIP's features."""
    image_distance = 1 - F.cosine_similarity(image, zero_shot_image, dim=1).mean()
    text_distance = 1 - F.cosine_similarity(text, zero_shot_text, dim=1).mean()
    return (c.ALPHA * F.cross_entropy(logits, label) + (1 - c.ALPHA) * F.cross_entropy(logits_rep, label)
            + c.REG_WEIGHT * image_distance + c.REG_WEIGHT * text_distance)


@TRAINER_REGISTRY.register()
class MMRL(PromptTuningTrainer):
    cfg_node = "MMRL"
    model_name = "MultiModalRepresentationLearner"  # the released checkpoint folder name
    learnable_attr = "representation_learner"

    def check_cfg(self, cfg):
        c = check_mmrl_keys(cfg.TRAINER.MMRL)
        values = dataset_settings(c, cfg.DATASET.NAME)
        if values:  # into the run's config, as the released code merges its table
            frozen = cfg.is_frozen()
            cfg.defrost()
            for key, value in values.items():
                cfg.TRAINER.MMRL[key] = value
            if frozen:
                cfg.freeze()
            print(f"TRAINER.MMRL.DATASET_TABLE {c.DATASET_TABLE}: "
                  f"{', '.join(f'{k} {v}' for k, v in values.items())} for {cfg.DATASET.NAME} (the released "
                  "per-dataset values; set TRAINER.MMRL.DATASET_TABLE \"\" to use the config's own)")
        super().check_cfg(cfg)

    def build_custom_clip(self, cfg, classnames, clip_model):
        return MMRLCLIP(cfg, classnames, clip_model)

    def build_model(self):
        super().build_model()
        self.choose_test_logits("this model's own classes")

    def load_model(self, directory, epoch=None):
        super().load_model(directory, epoch)
        if directory:
            self.choose_test_logits("the loaded weights were trained on these classes")

    def choose_test_logits(self, same):
        """TEST_LOGITS auto: fused on the classes the weights were trained on, class-token otherwise."""
        model, setting = self.model, self.model.settings.TEST_LOGITS
        if setting == "auto":
            model.fused = int(model.representation_learner.trained_on) == model.classes_fingerprint
            why = same if model.fused else "the loaded weights were trained on other classes"
        else:
            model.fused = setting == "fused"
            why = f"TRAINER.MMRL.TEST_LOGITS {setting}"
        print(f"Test logits: {'fused' if model.fused else 'class-token'} ({why})")

    def compute_loss(self, image, label):
        model = self.model
        c = model.settings
        image_features, representation, text_features = model.outputs(image)
        logits = model.logits(image_features, text_features)
        logits_rep = model.logits(representation, text_features)
        with torch.autocast(self.device.type, enabled=False):
            zero_shot_text = model.zero_shot_text_features()
        zero_shot_image = model.zero_shot_image_features(image)
        loss = mmrl_loss(c, logits, logits_rep, label, image_features, text_features, zero_shot_image,
                         zero_shot_text)
        return loss, c.ALPHA * logits + (1 - c.ALPHA) * logits_rep
