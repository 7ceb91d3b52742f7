"""CLIP-LoRA: low-rank adaptation of both CLIP encoders (Zanella and Ben Ayed, CVPRW 2024).

Frozen CLIP with a hand-crafted prompt and low-rank updates W + ALPHA / sqrt(RANK) * B A of the
attention projections PARAMS (q, k, v; o is the output projection) in the blocks POSITION of the
ENCODER(s). A is
initialised as nn.Linear's weights, B at zero, so training starts from zero-shot CLIP; dropout
DROPOUT_RATE acts on the input of each update during training.

The prompt (TEMPLATE): "released" is "a photo of a {}." for every dataset, as the released code
runs (its per-dataset CoOp templates are commented out there; the paper keeps one setting for
all datasets); "dataset" is CoOp's per-dataset template (e.g. "{} texture." on DTD); any other text
with one "{}" is used as it is.

The released protocol (N_ITERS > 0): AdamW with a cosine schedule stepped after every batch,
over N_ITERS x NUM_SHOTS iterations. Here an epoch is N_ITERS iterations drawn pass after pass
from the training data (each epoch starts a fresh pass, so an epoch depends only on the RNG state
it starts from and a resumed run continues bit for bit), and a run lasts NUM_SHOTS epochs
(OPTIM.MAX_EPOCH is not used), so a checkpoint is saved as model.pth.tar-<NUM_SHOTS>. N_ITERS 0
trains OPTIM.MAX_EPOCH ordinary epochs with the OPTIM schedule instead.
"""
import math

import torch

from dassl.engine import TRAINER_REGISTRY

from datasets.templates import DEFAULT_TEMPLATE, dataset_template

from .clip_prompting import EncoderLoRA, PromptedCLIP, PromptTuningTrainer, clean_classname
from .clip_prompting.lora import PROJECTIONS

ENCODERS = ("text", "vision", "both")
# Blocks per POSITION, as released for 12-layer encoders; "all" is every block of any encoder.
POSITIONS = {
    "bottom": [0, 1, 2, 3], "mid": [4, 5, 6, 7], "up": [8, 9, 10, 11], "half-up": [6, 7, 8, 9, 10, 11],
    "half-bottom": [0, 1, 2, 3, 4, 5], "top3": [9, 10, 11], "all": None,
}
ETA_MIN = 1e-6  # the released cosine schedule's floor
RELEASED_TEMPLATE = DEFAULT_TEMPLATE  # "a photo of a {}.", the released code's prompt on every dataset


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN
    cfg.TRAINER.CLIPLORA = CN()
    cfg.TRAINER.CLIPLORA.ENCODER = "both"
    cfg.TRAINER.CLIPLORA.POSITION = "all"
    cfg.TRAINER.CLIPLORA.PARAMS = ["q", "k", "v"]
    cfg.TRAINER.CLIPLORA.RANK = 2
    cfg.TRAINER.CLIPLORA.ALPHA = 1.0
    cfg.TRAINER.CLIPLORA.DROPOUT_RATE = 0.25
    cfg.TRAINER.CLIPLORA.N_ITERS = 500  # iterations per shot (and per epoch); 0: OPTIM.MAX_EPOCH data passes
    cfg.TRAINER.CLIPLORA.PREC = "fp32"
    cfg.TRAINER.CLIPLORA.TEMPLATE = "released"  # "released", "dataset" (CoOp's per dataset), or text with "{}"


def check_cliplora_cfg(c):
    def fail(msg):
        raise ValueError(f"TRAINER.CLIPLORA: {msg}")
    if c.ENCODER not in ENCODERS:
        fail(f'ENCODER is "{c.ENCODER}"; use one of {", ".join(ENCODERS)}.')
    if c.POSITION not in POSITIONS:
        fail(f'POSITION is "{c.POSITION}"; use one of {", ".join(POSITIONS)}.')
    unknown = [p for p in c.PARAMS if p not in PROJECTIONS]
    if unknown or not c.PARAMS:
        fail(f"PARAMS is {list(c.PARAMS)}; list one or more of {', '.join(PROJECTIONS)} (o: the output projection).")
    if c.RANK < 1:
        fail(f"RANK is {c.RANK}; the rank of the updates must be at least 1.")
    if not 0 <= c.DROPOUT_RATE < 1:
        fail(f"DROPOUT_RATE is {c.DROPOUT_RATE}; use a probability in [0, 1).")
    if c.TEMPLATE not in ("released", "dataset") and c.TEMPLATE.count("{}") != 1:
        fail(f'TEMPLATE is "{c.TEMPLATE}"; use "released" (a photo of a {{}}. on every dataset), "dataset" '
             '(CoOp\'s per-dataset template), or a prompt with one "{}" for the class name.')
    if c.N_ITERS < 0:
        fail(f"N_ITERS is {c.N_ITERS}; use the iterations per shot (released: 500), or 0 for OPTIM.MAX_EPOCH epochs.")


def lora_template(c, dataset_name):
    """The prompt of each class: TEMPLATE "released", "dataset" or the text given."""
    if c.TEMPLATE == "released":
        return RELEASED_TEMPLATE
    if c.TEMPLATE == "dataset":
        return dataset_template(dataset_name)
    return c.TEMPLATE


def lora_blocks(c, encoder, owner):
    """The block indices of ``encoder`` that POSITION names."""
    layers = encoder.num_layers
    blocks = POSITIONS[c.POSITION] or list(range(layers))
    if max(blocks) >= layers:
        raise ValueError(f'{owner}: POSITION "{c.POSITION}" names block {max(blocks)}, but this CLIP encoder has '
                         f'{layers} blocks; use POSITION "all" or one within its depth.')
    return blocks


class CLIPLoRACLIP(PromptedCLIP):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__(clip_model)
        c = cfg.TRAINER.CLIPLORA
        check_cliplora_cfg(c)
        template = lora_template(c, cfg.DATASET.NAME)
        prompts = [template.format(clean_classname(name)) for name in classnames]
        print(f"Prompts: {prompts}")
        self.register_buffer("tokenized_prompts", self.text_encoder.tokenize(prompts), persistent=False)
        scale = c.ALPHA / math.sqrt(c.RANK)  # the released scaling (not LoRA's alpha / r)
        self.lora = torch.nn.ModuleDict()
        if c.ENCODER in ("text", "both"):
            blocks = lora_blocks(c, self.text_encoder, "TRAINER.CLIPLORA")
            self.lora["text"] = EncoderLoRA(self.text_encoder.width, blocks, c.PARAMS, c.RANK, scale, c.DROPOUT_RATE)
        if c.ENCODER in ("vision", "both"):
            self.image_encoder.require_vit("TRAINER.CLIPLORA", cfg.MODEL.BACKBONE.NAME, ', or ENCODER "text"')
            blocks = lora_blocks(c, self.image_encoder, "TRAINER.CLIPLORA")
            self.lora["vision"] = EncoderLoRA(self.image_encoder.width, blocks, c.PARAMS, c.RANK, scale,
                                              c.DROPOUT_RATE)
        print(f"LoRA: rank {c.RANK}, alpha {c.ALPHA}, dropout {c.DROPOUT_RATE}, projections {list(c.PARAMS)}, "
              f'blocks "{c.POSITION}", encoders: {c.ENCODER}')

    def encode_text(self, prompts):
        lora = self.lora["text"] if "text" in self.lora else None
        return self.text_encoder.encode_ids(self.tokenized_prompts, lora=lora)

    def encode_image(self, images, prompts):
        lora = self.lora["vision"] if "vision" in self.lora else None
        return self.image_encoder(images, lora=lora)


class BatchStream:
    """``length`` batches per iteration over it, drawn from ``loader`` pass after pass (each
    iteration over it starts a fresh pass, as an epoch of the engine does)."""

    def __init__(self, loader, length):
        self.loader, self.length = loader, length

    def __len__(self):
        return self.length

    def __iter__(self):
        batches = iter(self.loader)
        for _ in range(self.length):
            batch = next(batches, None)
            if batch is None:  # a pass is over: the next one reshuffles
                batches = iter(self.loader)
                batch = next(batches)
            yield batch


@TRAINER_REGISTRY.register()
class CLIPLoRA(PromptTuningTrainer):
    cfg_node = "CLIPLORA"
    model_name = "lora"
    learnable_attr = "lora"

    @property
    def iterations(self):
        """The released budget, N_ITERS x NUM_SHOTS iterations; 0: OPTIM.MAX_EPOCH epochs (also without shots)."""
        return self.method_cfg.N_ITERS * max(self.cfg.DATASET.NUM_SHOTS, 0)

    @property
    def lr_per_batch(self):
        return self.iterations > 0

    def check_cfg(self, cfg):
        check_cliplora_cfg(cfg.TRAINER.CLIPLORA)
        super().check_cfg(cfg)

    def build_custom_clip(self, cfg, classnames, clip_model):
        return CLIPLoRACLIP(cfg, classnames, clip_model)

    def build_scheduler(self, optim):
        if not self.iterations:
            return super().build_scheduler(optim)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=self.iterations, eta_min=ETA_MIN)

    def build_model(self):
        super().build_model()
        if self.method_cfg.N_ITERS and not self.iterations:
            print(f"TRAINER.CLIPLORA.N_ITERS counts iterations per shot, but DATASET.NUM_SHOTS is "
                  f"{self.cfg.DATASET.NUM_SHOTS} (all images): training runs OPTIM.MAX_EPOCH epochs instead")
        if self.iterations:
            n_iters, shots = self.method_cfg.N_ITERS, self.cfg.DATASET.NUM_SHOTS
            self.max_epoch = shots
            if self.train_loader_x is not None:
                self.train_loader_x = BatchStream(self.train_loader_x, n_iters)
            print(f"CLIP-LoRA schedule: {n_iters} iterations x {shots} shots = {self.iterations} iterations, "
                  f"run as {shots} epochs of {n_iters} (OPTIM.MAX_EPOCH is not used)")
