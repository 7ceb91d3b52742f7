"""A trainer written only against the Dassl API, and its tiny dataset, for engine tests.

``ToyTrainer`` is shaped like CoOp's own trainer files (check_cfg, build_model with
build_optimizer/build_lr_scheduler/register_model, forward_backward stepping the LR on the
last batch), and runs on generated solid-colour images in seconds.
"""
import os.path as osp
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from dassl.config import get_cfg_default
from dassl.data.datasets import DATASET_REGISTRY, Datum, DatasetBase
from dassl.engine import TRAINER_REGISTRY, TrainerX, build_trainer
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import close_logger, setup_logger

N_CLASSES = 3
COLORS = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]


# --------------------------------------------------------------------- plugin code
@DATASET_REGISTRY.register(force=True)
class EngineToyDataset(DatasetBase):
    """Solid-colour images with noise, one colour per class, under DATASET.ROOT/engine_toy."""

    dataset_dir = "engine_toy"

    def __init__(self, cfg):
        root = osp.join(cfg.DATASET.ROOT, self.dataset_dir)
        classnames = ["red", "green", "blue"]

        def items(split, n):
            return [
                Datum(impath=osp.join(root, split, f"{c}_{i}.png"), label=c,
                      classname=classnames[c])
                for c in range(N_CLASSES) for i in range(n)
            ]

        super().__init__(train_x=items("train", 4), val=items("val", 2), test=items("test", 3))


class ToyPromptLearner(nn.Module):
    """Frozen 'backbone', trainable context and head, and three kinds of buffers."""

    def __init__(self, n_cls, size):
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, 8))
        self.ctx = nn.Parameter(torch.zeros(8))
        self.head = nn.Linear(8, n_cls)
        self.register_buffer("token_prefix", torch.randn(n_cls, 2))  # class-dependent
        self.register_buffer("scale", torch.ones(1))  # persistent state
        self.register_buffer("scratch", torch.zeros(1), persistent=False)

    def forward(self, x):
        return self.head(torch.tanh(self.backbone(x)) + self.ctx) * self.scale


@TRAINER_REGISTRY.register(force=True)
class ToyTrainer(TrainerX):
    def check_cfg(self, cfg):
        if cfg.OPTIM.NAME not in ("sgd", "adam"):
            raise ValueError("toy trainer needs sgd or adam")

    def build_model(self):
        cfg = self.cfg
        self.model = ToyPromptLearner(self.num_classes, cfg.INPUT.SIZE[0])
        for p in self.model.backbone.parameters():
            p.requires_grad_(False)
        self.model.to(self.device)
        self.optim = build_optimizer(self.model, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("prompt_learner", self.model, self.optim, self.sched)

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        output = self.model(image)
        loss = F.cross_entropy(output, label)
        self.model_backward_and_update(loss)
        summary = {"loss": loss.item(), "acc": compute_accuracy(output, label)[0].item()}
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)


class Interrupted(Exception):
    pass


@TRAINER_REGISTRY.register(force=True)
class CrashingToyTrainer(ToyTrainer):
    """Dies right after the checkpoint of epoch 2 (a killed job)."""

    def after_epoch(self):
        super().after_epoch()
        if self.epoch == 1:
            raise Interrupted


@TRAINER_REGISTRY.register(force=True)
class NoModelTrainer(TrainerX):
    """A zero-shot style trainer: no registered model, nothing to train."""

    def build_model(self):
        self.model = lambda x: torch.zeros(x.shape[0], self.num_classes).index_fill_(1, torch.tensor([0]), 1.0)


# --------------------------------------------------------------------- data, config, run
def make_toy_data(root):
    """Noisy solid-colour images under root/engine_toy/{train,val,test} (4/2/3 per class)."""
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        folder = root / "engine_toy" / split
        folder.mkdir(parents=True)
        for c, colour in enumerate(COLORS):
            for i in range(n):
                noise = torch.randint(-25, 25, (20, 20, 3), generator=gen)
                pixels = (torch.tensor(colour) + noise).clamp(0, 255).to(torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{c}_{i}.png")
    return str(root)


def make_cfg(data_root, output_dir, trainer="ToyTrainer", max_epoch=2, **overrides):
    cfg = get_cfg_default()
    opts = [
        "TRAINER.NAME", trainer, "DATASET.NAME", "EngineToyDataset", "DATASET.ROOT", data_root,
        "OUTPUT_DIR", str(output_dir), "SEED", "1", "USE_CUDA", "False",
        "INPUT.SIZE", "(16, 16)", "INPUT.INTERPOLATION", "bicubic",
        "INPUT.TRANSFORMS", "['random_resized_crop', 'random_flip', 'normalize']",
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
        "DATALOADER.TEST.BATCH_SIZE", "4",
        "OPTIM.NAME", "sgd", "OPTIM.LR", "0.002", "OPTIM.MAX_EPOCH", str(max_epoch),
        "OPTIM.LR_SCHEDULER", "cosine", "OPTIM.WARMUP_EPOCH", "1",
        "OPTIM.WARMUP_TYPE", "constant", "OPTIM.WARMUP_CONS_LR", "1e-5",
        "TRAIN.PRINT_FREQ", "5",
    ]
    for key, value in overrides.items():
        opts += [key.replace("__", "."), value]
    cfg.merge_from_list(opts)
    cfg.freeze()
    return cfg


def run(cfg, eval_only=False, model_dir="", load_epoch=None, trainer_cls=None, identity=None):
    """What train.py does, in miniature; returns the trainer and the log text."""
    from dassl.utils import set_random_seed

    log_path = setup_logger(cfg.OUTPUT_DIR)
    try:
        set_random_seed(cfg.SEED)
        trainer = trainer_cls(cfg) if trainer_cls else build_trainer(cfg)
        trainer.identity = identity or {}
        if eval_only:
            trainer.load_model(model_dir, epoch=load_epoch)
            trainer.test()
            trainer.write_final_results()
        else:
            trainer.train()
    finally:
        close_logger()
    with open(log_path) as f:
        return trainer, f.read()


EPOCH_LINE = re.compile(
    r"^epoch \[(\d+)/(\d+)\] batch \[(\d+)/(\d+)\] time \d+\.\d{3} \(\d+\.\d{3}\) "
    r"data \d+\.\d{3} \(\d+\.\d{3}\) loss \d+\.\d{4} \(\d+\.\d{4}\) "
    r"acc \d+\.\d{4} \(\d+\.\d{4}\) lr (\d\.\d{4}e[+-]\d\d) eta \d+:\d\d:\d\d$"
)
