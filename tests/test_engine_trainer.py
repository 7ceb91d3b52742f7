"""End-to-end engine tests with a trainer written only against the Dassl API.

``ToyTrainer`` below is shaped like CoOp's own trainer files (check_cfg,
build_model with build_optimizer/build_lr_scheduler/register_model,
forward_backward stepping the LR on the last batch), and runs on a tiny
in-memory dataset of generated images.
"""
import logging
import math
import os
import os.path as osp
import re
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from dassl.config import get_cfg_default
from dassl.data.datasets import DATASET_REGISTRY, Datum, DatasetBase
from dassl.engine import TRAINER_REGISTRY, TrainerX, build_trainer
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import close_logger, read_json, setup_logger

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

    training_free = True

    def build_model(self):
        self.model = lambda x: torch.zeros(x.shape[0], self.num_classes).index_fill_(1, torch.tensor([0]), 1.0)


# --------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
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


def run(cfg, eval_only=False, model_dir="", load_epoch=None, trainer_cls=None):
    """What train.py does, in miniature; returns the trainer and the log text."""
    from dassl.utils import set_random_seed

    log_path = setup_logger(cfg.OUTPUT_DIR)
    try:
        set_random_seed(cfg.SEED)
        trainer = trainer_cls(cfg) if trainer_cls else build_trainer(cfg)
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


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    handlers_before = list(logging.getLogger().handlers)
    disable_before = logging.root.manager.disable
    trainer, log = run(make_cfg(data_root, out))
    return {"out": str(out), "trainer": trainer, "log": log,
            "logging": (handlers_before, disable_before)}


# --------------------------------------------------------------------- tests
def test_training_log_has_dassl_lines_in_order(trained):
    log = trained["log"]
    lines = log.splitlines()
    epoch_lines = [m for m in map(EPOCH_LINE.match, lines) if m]
    # 12 train images / batch 4 = 3 batches, each printed (3 < PRINT_FREQ), 2 epochs
    assert [(m.group(1), m.group(3)) for m in epoch_lines] == [
        (e, b) for e in ("1", "2") for b in ("1", "2", "3")
    ]
    lrs = [m.group(5) for m in epoch_lines]
    # epoch 1 trains at the warmup LR; its last line already shows epoch 2's LR;
    # epoch 2 trains at the base LR; its last line shows base * (1 + cos(pi/2)) / 2.
    assert lrs == ["1.0000e-05", "1.0000e-05", "2.0000e-03",
                   "2.0000e-03", "2.0000e-03", "1.0000e-03"]
    order = ["Loading trainer: ToyTrainer", "Loading dataset: EngineToyDataset",
             "Building transform_train", "Loading evaluator: Classification",
             "No checkpoint found, train from scratch", "epoch [1/2] batch [1/3]",
             "Finish training", "Deploy the last-epoch model", "Evaluate on the *test* set",
             "=> result", "* accuracy:", "Elapsed: "]
    positions = [log.index(s) for s in order]
    assert positions == sorted(positions)
    assert "TensorBoard is not installed" in log or "Initialize tensorboard" in log
    assert re.search(r"^\* total: 9$", log, re.M)
    assert re.search(r"^Elapsed: \d+:\d\d:\d\d$", log, re.M)
    ckpt = osp.join(trained["out"], "prompt_learner", "model.pth.tar-2")
    assert f"Checkpoint saved to {ckpt}" in lines


def test_checkpoint_layout_and_weights_only_content(trained):
    folder = osp.join(trained["out"], "prompt_learner")
    assert sorted(os.listdir(folder)) == ["checkpoint", "model.pth.tar-2"]
    with open(osp.join(folder, "checkpoint")) as f:
        assert f.read() == "model.pth.tar-2\n"
    ckpt = torch.load(osp.join(folder, "model.pth.tar-2"), weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["val_result"] is None
    # only trainable tensors plus the persistent, class-independent buffer
    assert sorted(ckpt["state_dict"]) == ["ctx", "head.bias", "head.weight", "scale"]
    live = trained["trainer"].model.state_dict()
    assert torch.equal(ckpt["state_dict"]["ctx"], live["ctx"])
    assert ckpt["scheduler"]["successor"]["T_max"] == 2.0
    assert isinstance(ckpt["optimizer"]["state"], dict)


def test_results_json_marks_completion_with_printed_metrics(trained):
    results = read_json(osp.join(trained["out"], "results.json"))
    assert results["split"] == "test"
    acc = results["metrics"]["accuracy"]
    assert f"* accuracy: {acc:.1f}%" in trained["log"]
    assert math.isclose(results["metrics"]["error_rate"], 100 - acc)
    assert results["trainer"] == "ToyTrainer" and results["model_epoch"] == 2


def test_eval_only_reproduces_accuracy_and_ignores_class_buffers(trained, data_root, tmp_path):
    cfg = make_cfg(data_root, tmp_path / "eval")
    trainer, log = run(cfg, eval_only=True, model_dir=trained["out"], load_epoch=2)
    path = osp.join(trained["out"], "prompt_learner", "model.pth.tar-2")
    assert f'Loading weights to prompt_learner from "{path}" (epoch = 2)' in log
    assert "Finish training" not in log
    expected = read_json(osp.join(trained["out"], "results.json"))["metrics"]
    got = read_json(osp.join(str(tmp_path / "eval"), "results.json"))["metrics"]
    assert got == pytest.approx(expected)
    assert read_json(osp.join(str(tmp_path / "eval"), "results.json"))["model_epoch"] == 2
    assert torch.equal(trainer.model.ctx, trained["trainer"].model.ctx)
    assert not osp.exists(tmp_path / "eval" / "prompt_learner")  # eval writes no checkpoint


def test_load_model_keeps_class_buffers_and_names_what_exists(trained, data_root, tmp_path):
    cfg = make_cfg(data_root, tmp_path / "x")
    setup_logger(str(tmp_path / "x"))
    try:
        trainer = ToyTrainer(cfg)
        # buffers built for the current class set survive loading; weights are replaced
        trainer.model.token_prefix.fill_(7.0)
        trainer.model.ctx.data.fill_(3.0)
        trainer.load_model(trained["out"], epoch=2)
        assert torch.all(trainer.model.token_prefix == 7.0)
        assert torch.equal(trainer.model.ctx, trained["trainer"].model.ctx)

        with pytest.raises(FileNotFoundError) as info:
            trainer.load_model(trained["out"], epoch=5)
        msg = str(info.value)
        assert msg.startswith('Model not found at "')
        assert "model.pth.tar-5" in msg and "model.pth.tar-2" in msg  # lists what exists
        with pytest.raises(FileNotFoundError, match="does not exist"):
            trainer.load_model(str(tmp_path / "nowhere"), epoch=2)
        with pytest.raises(ValueError, match="--model-dir"):
            trainer.load_model("", epoch=2)
    finally:
        close_logger()


def test_logging_state_untouched_and_no_wilds(trained):
    handlers_before, disable_before = trained["logging"]
    assert logging.root.manager.disable == disable_before == 0
    assert list(logging.getLogger().handlers) == handlers_before
    assert "wilds" not in sys.modules
    assert not isinstance(sys.stdout, type(None)) and type(sys.stdout).__name__ != "Logger"


def _lr_per_epoch(log, max_epoch):
    """LR each epoch trains at: the value on its first batch line."""
    first = {}
    for m in filter(None, map(EPOCH_LINE.match, log.splitlines())):
        if int(m.group(2)) == max_epoch and m.group(3) == "1":
            first.setdefault(int(m.group(1)), float(m.group(5)))
    return first


def test_resume_continues_the_exact_lr_sequence(data_root, tmp_path):
    straight_cfg = make_cfg(data_root, tmp_path / "straight", max_epoch=4,
                            TRAIN__CHECKPOINT_FREQ="1")
    straight_trainer, straight_log = run(straight_cfg)
    straight = _lr_per_epoch(straight_log, 4)
    base = 0.002
    assert straight == pytest.approx({1: 1e-5, 2: base, 3: base * 0.5 * (1 + math.cos(math.pi / 4)),
                                      4: base * 0.5 * (1 + math.cos(math.pi / 2))}, rel=1e-4)

    out = tmp_path / "resumed"
    crash_cfg = make_cfg(data_root, out, trainer="CrashingToyTrainer", max_epoch=4,
                         TRAIN__CHECKPOINT_FREQ="1")
    (out / "results.json").parent.mkdir(parents=True)
    (out / "results.json").write_text("{}")  # left by an earlier run in the same folder
    with pytest.raises(Interrupted):
        run(crash_cfg)
    assert not osp.exists(out / "results.json")  # a crashed run is not complete

    resume_cfg = make_cfg(data_root, out, max_epoch=4, TRAIN__CHECKPOINT_FREQ="1")
    trainer, log = run(resume_cfg)
    assert f"Found checkpoint at {out} (will resume training)" in log
    assert "Loaded scheduler" in log and "Previous epoch: 2" in log
    resumed = _lr_per_epoch(log, 4)
    assert sorted(resumed) == [3, 4]
    assert resumed == {3: straight[3], 4: straight[4]}
    # the successor drives the live optimizer, not an unpickled copy
    assert trainer.sched.successor.optimizer is trainer.optim
    assert trainer.optim.param_groups[0]["lr"] == straight_trainer.optim.param_groups[0]["lr"]
    assert osp.exists(out / "results.json")
    assert sorted(os.listdir(out / "prompt_learner")) == [
        "checkpoint", "model.pth.tar-1", "model.pth.tar-2", "model.pth.tar-3", "model.pth.tar-4"]


def test_best_val_saves_and_deploys_best_model(data_root, tmp_path):
    cfg = make_cfg(data_root, tmp_path / "best", max_epoch=1, TEST__FINAL_MODEL="best_val")
    _, log = run(cfg)
    assert "Evaluate on the *val* set" in log
    assert "Deploy the model with the best val performance" in log
    best = tmp_path / "best" / "prompt_learner" / "model-best.pth.tar"
    assert f'Loading weights to prompt_learner from "{best}" (epoch = 1)' in log
    assert torch.load(best, weights_only=True)["val_result"] is not None


def test_trainer_without_models_tests_and_exits(data_root, tmp_path):
    cfg = make_cfg(data_root, tmp_path / "zs", trainer="NoModelTrainer")
    trainer, log = run(cfg)
    assert "Nothing to train" in log and "epoch [" not in log
    assert "* accuracy: 33.3%" in log  # always predicts class 0; 3 of 9 test images
    assert read_json(str(tmp_path / "zs" / "results.json"))["metrics"]["accuracy"] == \
        pytest.approx(100 / 3)
    assert trainer.get_current_lr() is None
    # eval-only without --model-dir is fine for a training-free trainer
    _, log = run(make_cfg(data_root, tmp_path / "zs2", trainer="NoModelTrainer"),
                 eval_only=True, model_dir="")
    assert "load_model() is skipped" in log


def test_unknown_trainer_error_lists_names_and_packages(data_root, tmp_path):
    cfg = make_cfg(data_root, tmp_path / "u", trainer="ToyTrainr")
    with pytest.raises(ValueError) as info:
        build_trainer(cfg)
    msg = str(info.value)
    assert "but got [ToyTrainr] (do you mean [ToyTrainer]?)" in msg
    assert "'ToyTrainer'" in msg and "`trainers/`" in msg and "`datasets/`" in msg
