"""DePT's channel-adjusted transfer (CAT) head, a plug-in for any prompt-tuned CLIP.

The method and its keys are described in ``trainers/dept.py``; this module is the machinery
the shared trainer runs when TRAINER.DEPT.ENABLED is True:
- ``ChannelAdjustedTransfer``: a channel-wise scale and shift of the image features, another of
  the text features, and a linear classifier over the classes it is trained on;
- ``FeatureTap``: the encoders' outputs before normalisation, read while the method's own
  ``features`` runs, so the head sees the very features the prompts produced (one forward);
- ``DePT``: the training loss (the method's, with its CE share moved to the head) and the
  test-time mix of the two heads' scores.
"""
import contextlib
import hashlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # this project's engine shows a user error's message alone, without a traceback
    from dassl.utils.errors import UserInputError as _UserError
    _BASES = (_UserError, ValueError)
except ImportError:  # an original Dassl checkout
    _BASES = (ValueError,)

FUSIONS = ("probabilities", "logits")
HEAD_NAME = "dept_head"  # registered model name: the checkpoint folder of the head


class DePTError(*_BASES):
    """DePT cannot run as configured (wrong split, a model it cannot read, another class set)."""


def dept_node(cfg):
    """TRAINER.DEPT, or None where the config lacks it (a checkout of the original engine)."""
    return cfg.TRAINER.get("DEPT", None)


def dept_enabled(cfg):
    node = dept_node(cfg)
    return node is not None and bool(node.ENABLED)


def check_dept_cfg(c):
    def fail(msg):
        raise ValueError(f"TRAINER.DEPT: {msg}")
    if not 0.0 <= c.WEIGHT <= 1.0:
        fail(f"WEIGHT is {c.WEIGHT}; it is lambda, the CAT head's share of the loss and of the base-class scores, "
             "so it must lie in [0, 1] (released: 0.7).")
    if not c.HEAD_LR_MULT > 0:
        fail(f"HEAD_LR_MULT is {c.HEAD_LR_MULT}; the head's learning rate is OPTIM.LR times this factor, so it must "
             "be positive (released: 6.5).")
    if c.FUSION not in FUSIONS:
        fail(f'FUSION is "{c.FUSION}"; use probabilities (the paper\'s mix of the two heads\' probabilities) or '
             "logits (the released code's mix of their logits).")


def head_scores_these_classes(cfg):
    """The released rule for where the CAT head applies, on DATASET.SUBSAMPLE_CLASSES.

    base                      -> yes: the base classes of base-to-new, trained and tested;
    all, an ImageNet dataset  -> yes: the cross-dataset source (ImageNet) and the domain-
                                 generalisation targets (ImageNet-V2/-Sketch/-A/-R, its classes);
    new                       -> no: new classes are scored by the prompts' own head alone;
    all, any other dataset    -> no: the cross-dataset targets, classes the head never saw.
    The released code tests ``'ImageNet' in DATASET.NAME``; so does this.
    """
    subsample = cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")
    return subsample == "base" or (subsample == "all" and "ImageNet" in cfg.DATASET.NAME)


def class_key(name):
    """A stable 63-bit fingerprint of a class name: the head's checkpoint records which row is which class."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little") >> 1


class ChannelScaleShift(nn.Module):
    """x * scale + shift, one scale and one shift per feature channel, starting as the identity."""

    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)


class ChannelAdjustedTransfer(nn.Module):
    """DePT's CAT head over the unnormalised features: scale/shift per channel, then a linear classifier.

    Released names: ``film_lp_img`` / ``film_lp_text`` (FiLM, scale 1, bias 0) and ``linear_probe_proj``
    (nn.Linear with torch's default initialisation). ``class_keys`` records the classes of the rows,
    so a checkpoint loads onto a subset of its classes (ImageNet-A and -R) by name, and onto any
    other class set with a clear error.
    """

    def __init__(self, embed_dim, classnames):
        super().__init__()
        self.image_channels = ChannelScaleShift(embed_dim)
        self.text_channels = ChannelScaleShift(embed_dim)
        self.classifier = nn.Linear(embed_dim, len(classnames))
        self.register_buffer("class_keys", torch.tensor([class_key(c) for c in classnames], dtype=torch.int64))

    def forward(self, image_features):
        """Scores (B, C) of images from their unnormalised features (B, E): what the head does at test."""
        x = image_features.to(self.classifier.weight.dtype)
        return self.classifier(self.image_channels(x))

    def training_logits(self, image_features, text_rows, label):
        """As released, the classifier learns from the text features of each image's class and from
        the image features alike: scores (2B, C) of [text rows; images] and their labels [label; label]."""
        dtype = self.classifier.weight.dtype
        rows = torch.cat([self.text_channels(text_rows.to(dtype)), self.image_channels(image_features.to(dtype))])
        return self.classifier(rows), torch.cat([label, label])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "class_keys")
        if saved is not None and not torch.equal(saved.cpu(), self.class_keys.cpu()):
            rows = rows_of(saved.tolist(), self.class_keys.tolist())
            for name in ("classifier.weight", "classifier.bias"):
                if prefix + name in state_dict:
                    state_dict[prefix + name] = state_dict[prefix + name][rows]
            state_dict[prefix + "class_keys"] = saved[rows]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def rows_of(saved, wanted):
    """Indices into the saved classes of each wanted class (a name may occur twice: in order)."""
    where = {}
    for i, key in enumerate(saved):
        where.setdefault(key, []).append(i)
    missing = sum(1 for key in wanted if key not in where)
    if missing:
        raise DePTError(
            f"The DePT head in this checkpoint was trained on {len(saved)} other classes: {missing} of the "
            f"{len(wanted)} classes to score here are not among them. The CAT head scores only the classes it was "
            "trained on (or a subset of them); score other classes with the prompts' own head: "
            "DATASET.SUBSAMPLE_CLASSES new.")
    rows, used = [], {}
    for key in wanted:
        options = where[key]
        rows.append(options[min(used.get(key, 0), len(options) - 1)])
        used[key] = used.get(key, 0) + 1
    return torch.tensor(rows, dtype=torch.long)


class FeatureTap:
    """The encoders' outputs (features before normalisation) during one call of ``model.features``.

    Only calls made inside ``features`` count: the frozen passes some methods add around it
    (PromptSRC's teacher, KgCoOp's hand-crafted prompts) are not the prompts' features.
    """

    def __init__(self, model):
        self.model = model
        self.image, self.text = [], []
        self.active = False

    def _keep(self, outputs):
        def hook(module, inputs, output):
            if self.active:
                outputs.append(output)
        return hook

    @contextlib.contextmanager
    def watch(self):
        model = self.model
        features = model.features
        self.image, self.text = [], []

        def watched(*args, **kwargs):
            self.active = True
            try:
                return features(*args, **kwargs)
            finally:
                self.active = False
        handles = [model.image_encoder.register_forward_hook(self._keep(self.image)),
                   model.text_encoder.register_forward_hook(self._keep(self.text))]
        model.features = watched  # an instance attribute: the class's method for this call only
        try:
            yield self
        finally:
            del model.features
            for handle in handles:
                handle.remove()

    def features(self, logits):
        """(image (B, E), text rows (C, E) or (B, C, E), or None where a text state was given) of the
        last ``features`` call, whose scores are ``logits`` (B, C)."""
        name = type(self.model).__name__
        if len(self.image) != 1:
            raise DePTError(
                f"DePT reads the image features the prompts produce, but {name}.features ran the image encoder "
                f"{len(self.image)} times; DePT applies to methods with one prompted image pass (CoOp, CoCoOp, "
                "KgCoOp, MaPLe, PromptSRC, MuDPT, ...). Set TRAINER.DEPT.ENABLED False for this trainer.")
        image = self.image[0]
        if not self.text:
            return image, None
        text = torch.cat(self.text)
        images, classes = logits.shape
        if text.shape[0] == images * classes and images * classes != classes:
            return image, text.view(images, classes, -1)  # one set per image (CoCoOp)
        if text.shape[0] != classes:
            raise DePTError(f"DePT cannot match {name}'s {text.shape[0]} text features to its {classes} classes; "
                            "set TRAINER.DEPT.ENABLED False for this trainer.")
        return image, text


class DePT:
    """DePT for one trainer's model: its CAT head (None where the classes are new) and what it adds."""

    def __init__(self, cfg, model, classnames, half_head=False):
        c = dept_node(cfg)
        check_dept_cfg(c)
        self.weight, self.fusion, self.lr_mult = float(c.WEIGHT), c.FUSION, float(c.HEAD_LR_MULT)
        self.tap = FeatureTap(model)
        self.head = None
        split = f"DATASET.SUBSAMPLE_CLASSES {cfg.DATASET.get('SUBSAMPLE_CLASSES', 'all')} on {cfg.DATASET.NAME}"
        self.split = split
        if not head_scores_these_classes(cfg):
            print(f"DePT: {split} are new classes to the CAT head; the prompts' own head scores them alone")
            return
        self.head = ChannelAdjustedTransfer(model.embed_dim, classnames)
        if half_head:  # the released fp16 code casts the classifier to CLIP's dtype
            self.head.classifier.half()
        print(f"DePT: CAT head on the {len(classnames)} classes of {split}, lambda {self.weight}, head LR = OPTIM.LR "
              f"x {self.lr_mult}, test-time fusion of the two heads' {self.fusion}")

    def check_trainable(self):
        if self.head is None:
            raise DePTError(
                f"TRAINER.DEPT.ENABLED True trains the CAT head on base classes: DATASET.SUBSAMPLE_CLASSES base "
                f"(base-to-new) or all on ImageNet (the cross-dataset source). Here {self.split} are classes the "
                "released rule scores without the head, so it would be trained and never used. Train on the base "
                "classes, or set TRAINER.DEPT.ENABLED False.")

    def loss(self, compute_loss, loss_logits, image, label):
        """The method's loss with lambda of its CE moved to the CAT head, as released:
        (1 - lambda) CE(logits) + lambda CE_CAT + the method's other terms, unweighted."""
        with self.tap.watch():
            loss, logits = compute_loss(image, label)
        image_features, text = self.tap.features(logits)
        if text is None:
            raise DePTError(f"{type(self.tap.model).__name__} computed no text features while training; DePT's "
                            "CAT head learns from them. Set TRAINER.DEPT.ENABLED False for this trainer.")
        rows = text[label] if text.dim() == 2 else text[torch.arange(len(label), device=label.device), label]
        cat_logits, cat_labels = self.head.training_logits(image_features, rows, label)
        moved = F.cross_entropy(loss_logits(cat_logits), cat_labels) - F.cross_entropy(loss_logits(logits), label)
        return loss + self.weight * moved, logits

    def inference(self, scores, image):
        """``scores(image)`` (the prompts' logits) mixed with the CAT head's, lambda to the head."""
        with self.tap.watch():
            logits = scores(image)
        image_features, _ = self.tap.features(logits)
        return fuse(logits, self.head(image_features), self.weight, self.fusion)


def fuse(itm_logits, cat_logits, weight, fusion):
    """The base-class scores of DePT: lambda for the CAT head, 1 - lambda for the prompts' head.

    ``logits`` (released): (1 - lambda) ITM + lambda CAT. ``probabilities`` (the paper):
    p = (1 - lambda) softmax(ITM) + lambda softmax(CAT), returned as log p, which argmax,
    softmax and the cross-entropy read as logits.
    """
    if fusion == "logits":
        return (1.0 - weight) * itm_logits + weight * cat_logits.to(itm_logits.dtype)
    itm = F.log_softmax(itm_logits.float(), dim=-1)
    cat = F.log_softmax(cat_logits.float(), dim=-1)
    if weight == 0.0:
        return itm
    if weight == 1.0:
        return cat
    return torch.logaddexp(itm + math.log(1.0 - weight), cat + math.log(weight))
