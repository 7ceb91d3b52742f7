"""Zero-shot CLIP with CoOp's hand-crafted per-dataset templates (training-free).

The templates live with the datasets (datasets/templates.py); CUSTOM_TEMPLATES and
DEFAULT_TEMPLATE stay importable from here, where CoOp's own zsclip.py defines them.
"""
import torch
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY

from datasets.templates import CUSTOM_TEMPLATES, DEFAULT_TEMPLATE, dataset_template  # noqa: F401  (CoOp's names)

from .clip_prompting import PromptedCLIP, PromptTuningTrainer, clean_classname, template_text_features

# ZeroshotCLIP2's generic templates: the method's own, for every dataset.
ENSEMBLE_TEMPLATES = (
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
)


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN  # as CoOp: the original dassl.config exports no CfgNode
    cfg.TRAINER.ZSCLIP = CN()
    cfg.TRAINER.ZSCLIP.PREC = "fp32"


class ZeroShotModel(PromptedCLIP):
    """CLIP whose class text features are fixed: the average of the given templates."""

    def __init__(self, clip_model, classnames, templates):
        super().__init__(clip_model)
        for template in templates:
            print(f"Prompts: {[template.format(clean_classname(c)) for c in classnames]}")
        features = torch.stack([template_text_features(self.text_encoder, classnames, t) for t in templates])
        self.register_buffer("fixed_text_features", F.normalize(features.mean(0), dim=-1), persistent=False)

    def text_features(self):
        return self.fixed_text_features

    def features(self, images, text_state=None):
        return super().features(images, self.fixed_text_features if text_state is None else text_state)


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(PromptTuningTrainer):
    cfg_node = "ZSCLIP"

    def templates(self):
        return [dataset_template(self.cfg.DATASET.NAME)]

    def build_model(self):
        clip_model = self.load_frozen_clip()
        self.model = ZeroShotModel(clip_model, self.classnames, self.templates()).to(self.device)


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2(ZeroshotCLIP):
    """Prompt ensembling over seven generic templates (+ the dataset's own, except ImageNet)."""

    def templates(self):
        templates = list(ENSEMBLE_TEMPLATES)  # a copy: never grow the class-level tuple
        if self.cfg.DATASET.NAME != "ImageNet":
            templates.append(dataset_template(self.cfg.DATASET.NAME))
        return templates
