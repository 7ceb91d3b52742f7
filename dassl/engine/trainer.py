"""Trainer classes: ``TrainerBase`` (model registry, checkpoints, loop skeleton),
``SimpleTrainer`` (data, evaluator, test, epoch hooks) and ``TrainerX`` (the
labelled-data epoch loop every CoOp-family method uses).

The lifecycle, printed lines and checkpoint layout follow Dassl 0.6.3; the
differences are the fixes listed on the methods (checkpoints hold only
trainable tensors, resume keeps the live scheduler, trainers without models
test and exit, a ``results.json`` completion marker is written).
"""
import datetime
import os
import os.path as osp
import time
from collections import OrderedDict

import numpy as np
import torch
from tqdm import tqdm

from ..data import DataManager
from ..evaluation import build_evaluator
from ..utils import (
    AverageMeter, MetricMeter, console_stream, describe_checkpoint_folder, load_checkpoint,
    load_trainable_state_dict, mkdir_if_missing, resume_from_checkpoint, save_checkpoint,
    tolist_if_not, trainable_state_dict, write_json,
)

RESULTS_FILE = "results.json"  # written after the final test: the run is complete


class TrainerBase:
    """Registry of (model, optimizer, scheduler) triples plus the training loop skeleton."""

    # A trainer that needs no trained weights (e.g. zero-shot CLIP) sets this, which
    # allows --eval-only without --model-dir.
    training_free = False

    def __init__(self):
        self._models = OrderedDict()
        self._optims = OrderedDict()
        self._scheds = OrderedDict()
        self._writer = None
        self._last_test = None  # (split, metrics) of the latest test()
        self._model_epoch = None  # training epochs behind the weights being tested

    # ---------------------------------------------------------------- registry
    def register_model(self, name="model", model=None, optim=None, sched=None):
        if self.__dict__.get("_models") is None:
            raise AttributeError("Cannot assign model before super().__init__() call")
        if self.__dict__.get("_optims") is None:
            raise AttributeError("Cannot assign optim before super().__init__() call")
        if self.__dict__.get("_scheds") is None:
            raise AttributeError("Cannot assign sched before super().__init__() call")
        if name in self._models:
            raise ValueError(
                f'Found duplicate model names: "{name}" is already registered; give each '
                "register_model() call its own name"
            )
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names=None):
        names_real = list(self._models.keys())
        if names is None:
            return names_real
        names = tolist_if_not(names)
        for name in names:
            if name not in names_real:
                raise KeyError(f'Model "{name}" is not registered; registered: {names_real}')
        return names

    # ---------------------------------------------------------------- checkpoints
    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        """Save every registered model to ``directory/<name>/``: only trainable
        parameters and persistent, class-independent buffers (no frozen backbone)."""
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            save_checkpoint(
                {
                    "state_dict": trainable_state_dict(self._models[name]),
                    "epoch": epoch + 1,
                    "optimizer": optim.state_dict() if optim is not None else None,
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "val_result": val_result,
                },
                osp.join(directory, name),
                is_best=is_best,
                model_name=model_name,
            )

    def resume_model_if_exist(self, directory):
        """Resume every model from ``directory/<name>/checkpoint``; returns the number
        of completed epochs (0 when there is nothing to resume, or no model)."""
        names = self.get_model_names()
        if not names:
            return 0
        file_missing = any(not osp.exists(osp.join(directory, n, "checkpoint")) for n in names)
        if file_missing:
            print("No checkpoint found, train from scratch")
            return 0
        print(f"Found checkpoint at {directory} (will resume training)")
        start_epoch = 0
        for name in names:
            start_epoch = resume_from_checkpoint(
                osp.join(directory, name), self._models[name], self._optims[name],
                self._scheds[name],
            )
        return start_epoch

    def load_model(self, directory, epoch=None):
        """Load ``model.pth.tar-<epoch>`` (or ``model-best.pth.tar``) of every registered
        model from ``directory/<name>/``, ignoring class-dependent buffers, so weights
        trained on one class set evaluate on another."""
        if not directory:
            if self.training_free:
                print("Note that load_model() is skipped as no pretrained model is given "
                      "(ignore this if it's done on purpose)")
                return
            raise ValueError(
                f"{type(self).__name__} needs trained weights, but no model directory was "
                "given: pass --model-dir <output folder of the training run> and "
                "--load-epoch <epoch>."
            )
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            model_path = osp.join(directory, name, model_file)
            if not osp.exists(model_path):
                raise FileNotFoundError(
                    f'Model not found at "{model_path}". '
                    f"{describe_checkpoint_folder(osp.join(directory, name))} Check --model-dir "
                    "and --load-epoch (it must be an epoch that was saved, usually MAX_EPOCH)."
                )
            checkpoint = load_checkpoint(model_path)
            print(f'Loading weights to {name} from "{model_path}" '
                  f"(epoch = {checkpoint.get('epoch')})")
            load_trainable_state_dict(self._models[name], checkpoint["state_dict"],
                                      source=f'Checkpoint "{model_path}"')
            self._model_epoch = checkpoint.get("epoch")

    def write_final_results(self, output_dir=None):
        """Atomically write ``results.json`` (split and metrics of the latest test) into
        the output folder. Its presence marks the run as complete."""
        output_dir = output_dir or self.output_dir
        split, metrics = self._last_test if self._last_test is not None else (None, {})
        cfg = getattr(self, "cfg", None)
        payload = {
            "split": split,
            "metrics": {k: float(v) for k, v in metrics.items()},
            "trainer": cfg.TRAINER.NAME if cfg is not None else type(self).__name__,
            "dataset": cfg.DATASET.NAME if cfg is not None else "",
            "model_epoch": self._model_epoch,
        }
        path = osp.join(output_dir, RESULTS_FILE)
        write_json(payload, path)
        return path

    # ---------------------------------------------------------------- modes, LR, loss
    def set_model_mode(self, mode="train", names=None):
        for name in self.get_model_names(names):
            if mode == "train":
                self._models[name].train()
            elif mode in ("test", "eval"):
                self._models[name].eval()
            else:
                raise KeyError(f'Unknown model mode "{mode}"; use "train", "test" or "eval"')

    def update_lr(self, names=None):
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def detect_anomaly(self, loss):
        if not torch.isfinite(loss).all():
            raise FloatingPointError("Loss is infinite or NaN!")

    def get_current_lr(self, names=None):
        """LR of the first registered model that has an optimizer; None if none has."""
        for name in self.get_model_names(names):
            optim = self._optims[name]
            if optim is not None:
                return optim.param_groups[0]["lr"]
        return None

    # ---------------------------------------------------------------- tensorboard
    def init_writer(self, log_dir):
        if self.__dict__.get("_writer") is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("TensorBoard is not installed: no event files are written "
                  "(pip install tensorboard to enable them)")
            return
        mkdir_if_missing(log_dir)
        print(f"Initialize tensorboard (log_dir={log_dir})")
        self._writer = SummaryWriter(log_dir=log_dir)

    def close_writer(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write_scalar(self, tag, scalar_value, global_step=None):
        if self._writer is not None and scalar_value is not None:
            self._writer.add_scalar(tag, scalar_value, global_step)

    # ---------------------------------------------------------------- loop
    def train(self, start_epoch, max_epoch):
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()
        if self.training_free or not self.get_model_names():
            print("Nothing to train: no model is registered")
        else:
            # range built after before_train(), so a resumed start_epoch applies
            for self.epoch in range(self.start_epoch, self.max_epoch):
                self.before_epoch()
                self.run_epoch()
                self.after_epoch()
            self._model_epoch = self.max_epoch
        self.after_train()

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_epoch(self):
        pass

    def after_epoch(self):
        pass

    def run_epoch(self):
        raise NotImplementedError

    def test(self):
        raise NotImplementedError

    def parse_batch_train(self, batch):
        raise NotImplementedError

    def parse_batch_test(self, batch):
        raise NotImplementedError

    def forward_backward(self, batch):
        raise NotImplementedError

    def model_inference(self, input):
        raise NotImplementedError

    def model_zero_grad(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss):
        self.detect_anomaly(loss)
        loss.backward()

    def model_update(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss, names=None):
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)


class SimpleTrainer(TrainerBase):
    """Builds data, model and evaluator from ``cfg``; implements test and epoch hooks."""

    def __init__(self, cfg):
        super().__init__()
        self.check_cfg(cfg)
        if torch.cuda.is_available() and cfg.USE_CUDA:
            self.device = torch.device("cuda")
        else:
            self.device = torch.device("cpu")
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        self.cfg = cfg
        # Data first: few-shot sampling must be the first consumer of the seeded RNG.
        self.build_data_loader()
        self.build_model()
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
        self.best_result = -np.inf

    def check_cfg(self, cfg):
        """Hook for trainers to validate their config keys."""

    def build_data_loader(self):
        dm = DataManager(self.cfg)
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname
        self.dm = dm

    def build_model(self):
        raise NotImplementedError(
            f"{type(self).__name__} must override build_model(): build the network, its "
            "optimizer (build_optimizer) and scheduler (build_lr_scheduler), then call "
            "self.register_model(name, model, optim, sched)."
        )

    def train(self):
        super().train(self.start_epoch, self.max_epoch)

    def before_train(self):
        directory = self.cfg.OUTPUT_DIR
        if self.cfg.RESUME:
            directory = self.cfg.RESUME
        # A stale completion marker must not outlive a run that starts (and may crash).
        stale_marker = osp.join(self.output_dir, RESULTS_FILE)
        if osp.exists(stale_marker):
            os.remove(stale_marker)
        self.start_epoch = self.resume_model_if_exist(directory)
        self.init_writer(osp.join(self.output_dir, "tensorboard"))
        self._warn_if_val_is_test()
        self.time_start = time.time()

    def _warn_if_val_is_test(self):
        dataset = getattr(getattr(self, "dm", None), "dataset", None)
        if (self.cfg.TEST.FINAL_MODEL == "best_val" and dataset is not None
                and dataset.val is not None and dataset.val is dataset.test):
            print(f"Warning: TEST.FINAL_MODEL=best_val selects on the val split, but "
                  f"{self.cfg.DATASET.NAME} uses its test set as val: the reported test "
                  "accuracy is then optimistic")

    def after_train(self):
        print("Finish training")
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                print("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                print("Deploy the last-epoch model")
            self.test()
        elapsed = round(time.time() - self.time_start)
        print(f"Elapsed: {datetime.timedelta(seconds=elapsed)}")
        self.write_final_results()
        self.close_writer()

    def after_epoch(self):
        last_epoch = (self.epoch + 1) == self.max_epoch
        do_test = not self.cfg.TEST.NO_TEST
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        meet_checkpoint_freq = freq > 0 and (self.epoch + 1) % freq == 0

        if do_test and self.cfg.TEST.FINAL_MODEL == "best_val":
            curr_result = self.test(split="val")
            if curr_result > self.best_result:
                self.best_result = curr_result
                self.save_model(self.epoch, self.output_dir, val_result=curr_result,
                                model_name="model-best.pth.tar")
        if meet_checkpoint_freq or last_epoch:
            self.save_model(self.epoch, self.output_dir)

    @torch.no_grad()
    def test(self, split=None):
        """Evaluate on ``split`` (default ``TEST.SPLIT``; "val" falls back to "test"
        when there is no val set) and return the first metric (accuracy)."""
        self.set_model_mode("eval")
        self.evaluator.reset()
        if split is None:
            split = self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is not None:
            data_loader = self.val_loader
        else:
            split = "test"
            data_loader = self.test_loader
        print(f"Evaluate on the *{split}* set")
        # The progress bar goes to the terminal only, never into log.txt.
        for batch in tqdm(data_loader, file=console_stream(), disable=None):
            input, label = self.parse_batch_test(batch)
            output = self.model_inference(input)
            self.evaluator.process(output, label)
        results = self.evaluator.evaluate()
        for k, v in results.items():
            self.write_scalar(f"{split}/{k}", v, self.epoch)
        self._last_test = (split, results)
        return list(results.values())[0]

    def model_inference(self, input):
        return self.model(input)

    def parse_batch_test(self, batch):
        input = batch["img"].to(self.device)
        label = batch["label"].to(self.device)
        return input, label


class TrainerX(SimpleTrainer):
    """Training loop over the labelled loader ``train_loader_x``."""

    def run_epoch(self):
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time = AverageMeter()
        data_time = AverageMeter()
        # Plugins read batch_idx/num_batches inside forward_backward (LR step on the last batch).
        self.num_batches = len(self.train_loader_x)
        print_freq = self.cfg.TRAIN.PRINT_FREQ

        end = time.time()
        for self.batch_idx, batch in enumerate(self.train_loader_x):
            data_time.update(time.time() - end)
            loss_summary = self.forward_backward(batch)
            batch_time.update(time.time() - end)
            losses.update(loss_summary)

            meet_freq = (self.batch_idx + 1) % print_freq == 0
            only_few_batches = self.num_batches < print_freq
            if meet_freq or only_few_batches:
                print(self._epoch_line(losses, batch_time, data_time))

            n_iter = self.epoch * self.num_batches + self.batch_idx
            for name, meter in losses.meters.items():
                self.write_scalar("train/" + name, meter.avg, n_iter)
            self.write_scalar("train/lr", self.get_current_lr(), n_iter)
            end = time.time()

    def _epoch_line(self, losses, batch_time, data_time):
        nb_remain = (self.num_batches - self.batch_idx - 1)
        nb_remain += (self.max_epoch - self.epoch - 1) * self.num_batches
        eta = str(datetime.timedelta(seconds=int(batch_time.avg * nb_remain)))
        parts = [
            f"epoch [{self.epoch + 1}/{self.max_epoch}]",
            f"batch [{self.batch_idx + 1}/{self.num_batches}]",
            f"time {batch_time.val:.3f} ({batch_time.avg:.3f})",
            f"data {data_time.val:.3f} ({data_time.avg:.3f})",
            str(losses),
        ]
        lr = self.get_current_lr()
        if lr is not None:  # trainers without an optimizer print no lr field
            parts.append(f"lr {lr:.4e}")
        parts.append(f"eta {eta}")
        return " ".join(p for p in parts if p)

    def parse_batch_train(self, batch):
        input = batch["img"].to(self.device)
        label = batch["label"].to(self.device)
        domain = batch["domain"].to(self.device)
        return input, label, domain
