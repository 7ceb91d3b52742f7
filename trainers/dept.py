"""DePT: decoupled prompt tuning (Zhang et al., CVPR 2024), a plug-in for the prompt-tuning methods.

Not a trainer: TRAINER.DEPT.ENABLED True adds DePT to the method being trained (tested with CoOp,
CoCoOp, KgCoOp, MaPLe, PromptSRC and MuDPT). Beside the method's image-text matching (ITM) head,
CLIP's scaled cosine similarities, DePT trains a channel-adjusted transfer (CAT) head on the base
classes: a learnable scale and shift per feature channel of the image features, another of the
text features (both the unnormalised encoder outputs; scale 1, shift 0 at start), then a linear
classifier over the base classes (torch's default initialisation). The classifier learns from the
adjusted text features of each image's class and from the adjusted image features alike, so the
base-specific knowledge goes to this isolated space and the prompts keep more of what new
classes need.

- Loss (lambda = WEIGHT): (1 - lambda) CE(ITM) + lambda CE(CAT) + the method's other terms,
  unweighted (KgCoOp's distance, PromptSRC's consistency terms), as released for KgCoOp.
- Learning rate: the head trains at OPTIM.LR x HEAD_LR_MULT (released OPTIM.LR_EXP 6.5: 0.0035 x
  6.5), the prompts at OPTIM.LR, both on the config's schedule (warmup included). The head is a
  model of its own, checkpoint folder dept_head/.
- Test: the classes the head was trained on are scored by both heads, lambda to the CAT head;
  FUSION probabilities mixes their softmax probabilities (the paper's equation), FUSION logits
  their logits (the released code). New classes are scored by the ITM head alone.
- Which classes are base (the released rule, on DATASET.SUBSAMPLE_CLASSES): base, or all on an
  ImageNet dataset (the cross-dataset source, and the domain-generalisation targets, which share
  its classes: ImageNet-A and -R take the head's rows of their 200 classes). new, and all on any
  other dataset (the cross-dataset targets), use the ITM head alone. Training is refused there:
  the head would never be used.
- PromptSRC: the Gaussian prompt aggregation averages the prompts; the head keeps its last-epoch
  weights. The released code has no PromptSRC variant; this one follows its KgCoOp recipe.
- Scripts: ``bash scripts/promptsrc/base2new_train.sh dtd 1 TRAINER.DEPT.ENABLED True`` (and the same
  options for base2new_test.sh) writes to the config's folder name plus ``_dept``; the released DePT
  settings are configs of their own, e.g. ``CFG=vit_b16_ep10_bs4_lr35_dept bash scripts/coop/...``.
"""
from .clip_prompting.dept import FUSIONS, ChannelAdjustedTransfer, DePT, check_dept_cfg, head_scores_these_classes

__all__ = ["FUSIONS", "ChannelAdjustedTransfer", "DePT", "check_dept_cfg", "head_scores_these_classes"]


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN
    cfg.TRAINER.DEPT = CN()
    cfg.TRAINER.DEPT.ENABLED = False
    cfg.TRAINER.DEPT.WEIGHT = 0.7          # lambda (released TRAINER.LINEAR_PROBE.WEIGHT)
    cfg.TRAINER.DEPT.HEAD_LR_MULT = 6.5    # the head's LR over OPTIM.LR (released OPTIM.LR_EXP)
    cfg.TRAINER.DEPT.FUSION = "probabilities"  # or logits (released): how base-class scores are mixed
