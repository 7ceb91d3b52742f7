"""Shared trainer of every CLIP prompt-tuning method.

A method subclass names its config node and checkpoint name and builds its
``PromptedCLIP``; loading CLIP, precision, freezing, the optimiser, the training step
and cached evaluation live here once.
"""
import contextlib
import os

import torch
import torch.nn.functional as F

from dassl.engine import TrainerX
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import load_pretrained_weights

from backbones import load_backbone_from_cfg
from backbones.preprocessing import adopt_preprocessing

from .dept import HEAD_NAME, DePT, dept_enabled
from .encoders import check_text_chunk, describe_text_chunk, set_fast_paths, set_text_chunk
from .prompts import learned_text_context
from .released import load_model_as_released

PRECISIONS = ("fp32", "fp16", "amp")
GPU_PRECISION_ON_CPU = "GPU_PRECISION_ON_CPU"


def gpu_precision_on_cpu():
    """Test switch (environment GPU_PRECISION_ON_CPU=1): run the GPU precision branches (fp16
    CLIP with a gradient scaler, fp16 autocast with a scaler) on the CPU, so CI executes them."""
    return os.environ.get(GPU_PRECISION_ON_CPU, "") not in ("", "0")


class PromptTuningTrainer(TrainerX):
    cfg_node = None          # e.g. "COOP": cfg.TRAINER.<cfg_node> holds the method's keys
    model_name = "prompt_learner"  # registered name = checkpoint folder
    learnable_attr = None    # registered sub-module of self.model; None = the whole model
    lr_per_batch = False     # True: the LR schedule steps after every batch (CLIP-LoRA's), not once per epoch
    # Reference numerics of an fp16 run: the learnable parts the released code holds in fp16 (attribute
    # names of the learnable module); None: all of them, as CoOp's and CoCoOp's dtype=clip_model.dtype
    reference_half = None
    dept = None  # DePT's head beside the method's own (TRAINER.DEPT), set by build_model

    def __init__(self, cfg, classnames=None):
        """``classnames``: build the model for this class list, without a dataset or loaders
        (inference on images; checkpoints hold no class-dependent tensors)."""
        self._given_classnames = None if classnames is None else list(classnames)
        super().__init__(cfg)
        if dept_enabled(cfg) and self.dept is None:
            raise ValueError(f"TRAINER.DEPT.ENABLED is True, but {type(self).__name__} builds no prompt-tuned model "
                             "for DePT's head to join (it trains nothing of its own); set TRAINER.DEPT.ENABLED False.")

    def build_data_loader(self):
        # The backbone comes first: the data transforms use its preprocessing.
        self.backbone = self.load_backbone()
        adopt_preprocessing(self.cfg, self.backbone.preprocessing, self.backbone.vision.is_transformer)
        if self._given_classnames is None:
            super().build_data_loader()
            return
        self.dm = None
        self.train_loader_x = self.train_loader_u = self.val_loader = self.test_loader = None
        self.num_classes = len(self._given_classnames)
        self.num_source_domains = 0
        self.lab2cname = dict(enumerate(self._given_classnames))

    @property
    def classnames(self):
        """The classes the model scores: the given list, else the dataset's (label order)."""
        if self._given_classnames is not None:
            return self._given_classnames
        return self.dm.dataset.classnames

    # -- configuration -------------------------------------------------------------------
    @property
    def method_cfg(self):
        return getattr(self.cfg.TRAINER, self.cfg_node)

    def check_cfg(self, cfg):
        prec = getattr(cfg.TRAINER, self.cfg_node).PREC
        if prec not in PRECISIONS:
            raise ValueError(f'TRAINER.{self.cfg_node}.PREC is "{prec}"; use one of {", ".join(PRECISIONS)}.')

    @property
    def gpu_precision(self):
        """True where the GPU precision branches run: on CUDA, or on CPU under the test switch."""
        return self.device.type == "cuda" or gpu_precision_on_cpu()

    @property
    def reference_numerics(self):
        """MODEL.REFERENCE_NUMERICS: the released code's numerics (fp16-rounded frozen weights, its fp16
        handling, the reference forward) instead of this project's exact fp32 weights, scaler and fast paths."""
        return bool(self.cfg.MODEL.get("REFERENCE_NUMERICS", False))  # a key the original engine lacks

    @property
    def precision(self):
        prec = self.method_cfg.PREC
        if prec == "fp16" and not self.gpu_precision and not self.reference_numerics:
            return "fp32"  # half-precision CLIP is a GPU mode; on CPU it is slow and inexact
        return prec

    # -- model -----------------------------------------------------------------------------
    def build_custom_clip(self, cfg, classnames, clip_model):
        raise NotImplementedError

    def learnable_module(self):
        return getattr(self.model, self.learnable_attr) if self.learnable_attr else self.model

    def load_backbone(self):
        """The frozen CLIP of MODEL.BACKBONE, any family, behind the backbone interface."""
        cfg = self.cfg
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        # where the global RNG stood: building a CLIP draws from it (reference numerics replay it)
        self.rng_before_backbone = torch.get_rng_state()
        backbone = load_backbone_from_cfg(cfg)
        self.backbone_facts = {"name": cfg.MODEL.BACKBONE.NAME, **backbone.facts()}
        return backbone

    def load_frozen_clip(self):
        """The backbone, at this run's precision (loaded with the data, see ``build_data_loader``)."""
        clip_model = self.backbone if getattr(self, "backbone", None) is not None else self.load_backbone()
        if self.method_cfg.PREC == "fp16" and self.precision == "fp32":
            print(f"TRAINER.{self.cfg_node}.PREC fp16 needs a GPU; running in fp32 on {self.device.type}")
        print(f"Precision: {self.precision}")  # what runs on this device, for the provenance table
        if self.reference_numerics:
            # the released build_model rounds the frozen weights to fp16; fp32 runs then only cast them back
            print("Numerics: reference (MODEL.REFERENCE_NUMERICS): frozen weights rounded to fp16 as the released "
                  "code loads them, its fp16 handling, the reference forward")
            clip_model.round_to_half(keep_half=self.precision == "fp16")
        elif self.precision == "fp16":
            clip_model.to_half()  # learnable tensors stay fp32; a GradScaler guards the step
        self.scaler = None
        self._text_state_cache = None
        return clip_model

    def build_model(self):
        cfg = self.cfg
        classnames = self.classnames
        clip_model = self.load_frozen_clip()
        print("Building custom CLIP")
        self.model = self.build_custom_clip(cfg, classnames, clip_model)
        chunk = check_text_chunk(cfg.MODEL.get("TEXT_CHUNK", None))  # a key the original engine lacks
        if chunk is None and self.reference_numerics:
            chunk = 0  # one pass, as released: chunks could change the last bits
        set_text_chunk(self.model, chunk)
        print(f"Text pass: MODEL.TEXT_CHUNK {describe_text_chunk(chunk)}")
        if dept_enabled(cfg):  # DePT: a CAT head beside the method's own, on base classes
            half = self.reference_numerics and self.precision == "fp16"  # the released fp16 head
            self.dept = DePT(cfg, self.model, classnames, half_head=half)
        print("Turning off gradients in both the image and the text encoder")
        trainable = self.trainable_named_parameters()
        print(f"Parameters to be updated: {sorted(n for n, _ in trainable)}")
        print(f"# trainable params: {sum(p.numel() for _, p in trainable):,}")
        if cfg.MODEL.INIT_WEIGHTS:
            load_pretrained_weights(self.learnable_module(), cfg.MODEL.INIT_WEIGHTS)

        if self.reference_numerics:
            self.use_reference_numerics()
        self.model.to(self.device)
        self.register_learners()
        if self.dept is not None and self.dept.head is not None:
            self.register_dept_head()
        use_scaler = self.precision == "fp16" or (self.precision == "amp" and self.gpu_precision)
        use_scaler = use_scaler and not self.reference_numerics  # the released fp16 step has no scaler
        self.scaler = torch.amp.GradScaler(self.device.type) if use_scaler else None

    def use_reference_numerics(self):
        """The released code's numerics: its forward (no fast paths) and, in fp16, learnable tensors,
        features and logits in fp16 as well."""
        set_fast_paths(self.model, False)
        if self.precision != "fp16":
            return
        module = self.learnable_module()
        for part in [module] if self.reference_half is None else [getattr(module, n) for n in self.reference_half]:
            if isinstance(part, torch.nn.Parameter):
                part.data = part.data.half()
            else:
                part.half()
        self.model.feature_dtype = None

    def loss_logits(self, logits):
        """Logits as the loss reads them: fp32, or as they are under reference numerics (fp16 there)."""
        return logits if self.reference_numerics else logits.float()

    def trainable_named_parameters(self):
        """(name, tensor) of every trainable tensor of the learnable module (and of DePT's head): what the
        optimisers update."""
        named = [(n, p) for n, p in self.learnable_module().named_parameters() if p.requires_grad]
        head = None if self.dept is None else self.dept.head
        return named + ([(f"{HEAD_NAME}.{n}", p) for n, p in head.named_parameters()] if head is not None else [])

    def register_dept_head(self):
        """DePT's head: a model of its own (checkpoint folder dept_head), at OPTIM.LR x TRAINER.DEPT.HEAD_LR_MULT
        on the method's schedule (the released code's second parameter group)."""
        head = self.dept.head.to(self.device)
        optim_cfg = self.cfg.OPTIM.clone()
        optim_cfg.defrost()
        optim_cfg.LR = self.cfg.OPTIM.LR * self.dept.lr_mult
        optim = build_optimizer(list(head.parameters()), optim_cfg)
        self.register_model(HEAD_NAME, head, optim, self.build_scheduler(optim))

    def run_facts(self):
        """What this run is, as data (train.py writes it to run_facts.json beside config.yaml);
        the printed lines say the same for people and older parsers."""
        cfg = self.cfg
        trainable = self.trainable_named_parameters()
        context = learned_text_context(self.model)  # None: no learned text context
        descriptions = getattr(self.model, "descriptions", None)  # the methods that read class descriptions
        return {
            "backbone": cfg.MODEL.BACKBONE.NAME,
            "family": self.backbone_facts["family"],
            "architecture": self.backbone_facts["architecture"],
            "trainer": cfg.TRAINER.NAME,
            "trainable_params": sum(p.numel() for _, p in trainable),
            "trainable_names": sorted(n for n, _ in trainable),
            "n_ctx": None if context is None else int(context.n_ctx),
            "prompt_text": None if context is None else context.prefix,
            "precision": self.precision,  # what runs on this device, not what the config asks
            "dataset": cfg.DATASET.NAME,
            "seed": cfg.SEED,
            "descriptions": None if descriptions is None else descriptions.facts(),
        }

    def register_learners(self):
        """Register the learnable module with its optimiser and scheduler under ``model_name``.

        A method whose parts train at different learning rates overrides this and
        registers one module per optimiser (the engine steps and saves each)."""
        module = self.learnable_module()
        self.optim = build_optimizer([p for p in module.parameters() if p.requires_grad], self.cfg.OPTIM)
        self.apply_adam_eps(self.optim)
        self.sched = self.build_scheduler(self.optim)
        self.register_model(self.model_name, module, self.optim, self.sched)

    def apply_adam_eps(self, optim):
        """A method's ADAM_EPS key on an Adam-family optimiser (SGD has no eps): the released configs of
        TCP and HiCroPL use 1e-3 against NaN losses in fp16; the engine's optimisers keep torch's 1e-8."""
        eps = self.method_cfg.get("ADAM_EPS")
        groups = [group for group in optim.param_groups if "eps" in group]
        if eps is None or not groups:
            return
        for group in groups:
            group["eps"] = float(eps)
        print(f"Adam eps: {float(eps):g} (TRAINER.{self.cfg_node}.ADAM_EPS)")

    def build_scheduler(self, optim):
        """The LR schedule of OPTIM, stepped once per epoch (``lr_per_batch``: after every batch)."""
        return build_lr_scheduler(optim, self.cfg.OPTIM)

    def autocast(self):
        if self.precision != "amp":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.gpu_precision else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    # -- training --------------------------------------------------------------------------
    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def compute_loss(self, image, label):
        logits = self.model(image)
        return F.cross_entropy(self.loss_logits(logits), label), logits

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        with self.autocast():
            if self.dept is not None:  # DePT: part of the CE moves to the CAT head
                loss, logits = self.dept.loss(self.compute_loss, self.loss_logits, image, label)
            else:
                loss, logits = self.compute_loss(image, label)
        self.model_backward_and_update(loss)  # the engine scales the loss with self.scaler, if any
        summary = {"loss": loss.item(), "acc": compute_accuracy(logits, label)[0].item()}
        if self.lr_per_batch or (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def before_train(self):
        if self.dept is not None:
            self.dept.check_trainable()  # before anything is resumed or written
        super().before_train()

    # -- evaluation ------------------------------------------------------------------------
    def load_model(self, directory, epoch=None):
        """This project's engine loads and checks checkpoints (its own and the released code's); under
        the original Dassl engine (no ``load_training_state``) the trainer loads them itself."""
        if hasattr(TrainerX, "load_training_state"):
            return super().load_model(directory, epoch)
        return load_model_as_released(self, directory, epoch)

    @torch.no_grad()
    def test(self, split=None):
        self._text_state_cache = None  # prompts may have changed since the last evaluation
        return super().test(split)

    def model_inference(self, image):
        if self.dept is not None and self.dept.head is not None:  # DePT: both heads, mixed, on its classes
            with self.autocast():
                return self.dept.inference(self.prompt_scores, image)
        return self.prompt_scores(image)

    def prompt_scores(self, image):
        """The method's own logits (B, C), with the text state computed once per evaluation where it can be."""
        with self.autocast():
            if self.model.text_depends_on_image or not self.cache_text_features:
                return self.model(image)
            if self._text_state_cache is None:
                self._text_state_cache = self.model.text_state()
            return self.model(image, text_state=self._text_state_cache)

    cache_text_features = True  # benchmark switch: False recomputes the text state per batch
