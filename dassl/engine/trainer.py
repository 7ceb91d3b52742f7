"""Trainer classes: ``TrainerBase`` (model registry, checkpoints, loop skeleton),
``SimpleTrainer`` (data, evaluator, test, epoch hooks) and ``TrainerX`` (the
labelled-data epoch loop every CoOp-family method uses).

The lifecycle, printed lines and checkpoint layout follow Dassl 0.6.3. The differences,
each a fix or an addition that leaves a run's numbers unchanged:
- checkpoints hold only trainable tensors, plus what an exact resume needs (RNG states,
  gradient-scaler state, the run's identity); a rolling ``model-last.pth.tar`` is written
  every epoch and on Ctrl-C/SIGTERM (even mid-epoch), so a killed run resumes bit for bit;
- resume keeps the live scheduler; trainers without models test and exit;
- ``results.json`` marks a completed run and records what it was;
- one run can span several processes (``torchrun``; see ``dassl.utils.distributed``);
- ``model_backward_and_update`` also scales the loss and steps through the trainer's
  gradient scaler (``self.scaler``), so mixed precision needs no code in a trainer;
- ``load_training_state`` restores on resume what ``training_state`` added to a checkpoint;
- ``load_model`` refuses a run of another trainer (named by its results.json, config.yaml or
  checkpoint), where the original would load matching tensors without a word;
- scalars go to TensorBoard and to ``metrics.csv``; the ETA uses the whole run's pace.
"""
import csv
import datetime
import math
import os
import os.path as osp
import signal
import time
from collections import OrderedDict

import numpy as np
import torch
from tqdm import tqdm

from ..data import DataManager
from ..evaluation import build_evaluator
from ..utils import (
    AverageMeter, MetricMeter, console_stream, describe_checkpoint_folder, load_checkpoint,
    load_trainable_state_dict, mkdir_if_missing, save_checkpoint, tolist_if_not,
    trainable_state_dict, write_json,
)
from ..utils import distributed as dist
from ..utils.env import get_rng_state, set_rng_state
from ..utils.errors import CheckpointError, CheckpointNotFoundError, OutputWriteError
from ..utils.torchtools import (
    explain_shape_mismatch, newest_checkpoint, read_latest_checkpoint, require_state_dict,
    restore_checkpoint,
)
from .interrupt import StopOnSignal, TrainingInterrupted
from .run_identity import check_identity, check_model_trainer

RESULTS_FILE = "results.json"  # written after the final test: the run is complete
LAST_CHECKPOINT = "model-last.pth.tar"  # rolling: the newest epoch not kept as model.pth.tar-N
METRICS_FILE = "metrics.csv"


class TrainerBase:
    """Registry of (model, optimizer, scheduler) triples plus the training loop skeleton."""

    def __init__(self):
        self._models = OrderedDict()
        self._optims = OrderedDict()
        self._scheds = OrderedDict()
        self._writer = None
        self._metrics_file = None
        self._last_test = None  # (split, metrics) of the latest test()
        self._model_epoch = None  # training epochs behind the weights being tested
        self._batch_weight = 1.0  # this process's share of the current batch (distributed)
        self.identity = {}  # what this run is (trainer, dataset, seed, ...): set by train.py
        self._stop = StopOnSignal()  # installed while train() runs
        # A trainer sets a torch.amp.GradScaler here (in build_model) to have model_backward_and_update
        # scale the loss and step through it; it is saved and restored with the training state.
        self.scaler = None

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
    def training_state(self):
        """What a checkpoint holds besides the weights, for an exact resume and clear errors.

        A trainer that adds entries here restores them in ``load_training_state``."""
        cfg = getattr(self, "cfg", None)
        best = getattr(self, "best_result", -np.inf)
        return {
            "rng_state": get_rng_state(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "best_result": float(best) if np.isfinite(best) else None,
            "identity": dict(self.identity),
            "config": cfg.dump() if cfg is not None else "",
        }

    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name="", extra=None):
        """Save every registered model to ``directory/<name>/``: only trainable
        parameters and persistent, class-independent buffers (no frozen backbone).
        ``epoch`` is the index of the finished epoch, stored as ``epoch + 1``."""
        if not dist.is_main_process():
            return
        state = dict(self.training_state(), **(extra or {}))
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            save_checkpoint(
                dict(state, **{
                    "state_dict": trainable_state_dict(self._models[name]),
                    "epoch": epoch + 1,
                    "optimizer": optim.state_dict() if optim is not None else None,
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "val_result": val_result,
                }),
                osp.join(directory, name),
                is_best=is_best,
                model_name=model_name,
            )

    def remove_last_checkpoint(self, directory):
        """Drop the rolling checkpoint once a numbered one of a later epoch exists."""
        if not dist.is_main_process():
            return
        for name in self.get_model_names():
            path = osp.join(directory, name, LAST_CHECKPOINT)
            if osp.exists(path):
                os.remove(path)

    def resume_model_if_exist(self, directory):
        """Resume every model from ``directory/<name>/checkpoint``; returns the number
        of completed epochs (0 when there is nothing to resume, or no model).

        The RNG states, gradient scaler and (for a run stopped mid-epoch) the position in
        the epoch are restored too, so the resumed run continues bit for bit."""
        names = self.get_model_names()
        if not names:
            return 0
        file_missing = any(not osp.exists(osp.join(directory, n, "checkpoint")) for n in names)
        if file_missing:
            print("No checkpoint found, train from scratch")
            return 0
        print(f"Found checkpoint at {directory} (will resume training)")
        for name in names:
            fpath, checkpoint = read_latest_checkpoint(osp.join(directory, name))
            require_state_dict(checkpoint, fpath)
            if checkpoint.get("identity") and self.identity:
                check_identity(checkpoint["identity"], self.identity, f'The checkpoint "{fpath}"',
                               "resume from it")
            with explain_shape_mismatch(fpath, checkpoint, getattr(self, "cfg", None)):
                restore_checkpoint(checkpoint, fpath, self._models[name], self._optims[name],
                                   self._scheds[name])
        # Every model's checkpoint holds the same training state; the RNG is restored last,
        # so nothing a trainer's hook does can shift it.
        self.load_training_state(checkpoint, source=f'Checkpoint "{fpath}"')
        self._resume_position = None
        if checkpoint.get("batches_done"):
            # Stopped mid-epoch: replay the epoch's data order, then continue from the stop.
            set_rng_state(checkpoint["epoch_rng_state"])
            self._resume_position = (checkpoint["batches_done"], checkpoint["rng_state"])
            print(f"Resuming inside epoch {checkpoint['epoch'] + 1} after batch {checkpoint['batches_done']}")
        elif checkpoint.get("rng_state"):
            set_rng_state(checkpoint["rng_state"])
        return checkpoint["epoch"]

    def load_training_state(self, state, source="The checkpoint"):
        """Restore, on resume, what ``training_state()`` put into the checkpoint ``state`` (the
        dict the engine has already loaded; ``source`` names it in error messages).

        A trainer that adds entries to ``training_state()`` overrides both and calls super()."""
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("best_result") is not None:
            self.best_result = state["best_result"]

    def load_model(self, directory, epoch=None):
        """Load ``model.pth.tar-<epoch>`` of every registered model from ``directory/<name>/``
        (without an epoch: ``model-best.pth.tar`` if a validation-based selection wrote one,
        else the newest checkpoint), ignoring class-dependent buffers, so weights trained
        on one class set evaluate on another."""
        names = self.get_model_names()
        if not directory:
            if not names:
                print("Note that load_model() is skipped as no pretrained model is given "
                      "(ignore this if it's done on purpose)")
                return
            raise CheckpointError(
                f"{type(self).__name__} needs trained weights, but no model directory was "
                "given: pass --model-dir <output folder of the training run> and "
                "--load-epoch <epoch>."
            )
        # Before looking for files: another trainer's folder holds other model folders.
        cfg = getattr(self, "cfg", None)
        trainer = self.identity.get("trainer") or (cfg.TRAINER.NAME if cfg is not None else None)
        if names:
            check_model_trainer(directory, trainer)
        for name in names:
            folder = osp.join(directory, name)
            model_file = f"model.pth.tar-{epoch}" if epoch is not None else newest_checkpoint(folder)
            model_path = osp.join(folder, model_file or "model-best.pth.tar")
            if not osp.exists(model_path):
                raise CheckpointNotFoundError(
                    f'Model not found at "{model_path}". '
                    f"{describe_checkpoint_folder(folder)} Check --model-dir "
                    "and --load-epoch (it must be an epoch that was saved, usually MAX_EPOCH)."
                )
            if epoch is None:
                print(f"No --load-epoch given: using {model_file}, the newest checkpoint in {folder}")
            checkpoint = load_checkpoint(model_path)
            require_state_dict(checkpoint, model_path)
            check_model_trainer(directory, trainer, (checkpoint.get("identity") or {}).get("trainer"),
                                f'recorded in "{model_path}"')
            print(f'Loading weights to {name} from "{model_path}" '
                  f"(epoch = {checkpoint.get('epoch')})")
            with explain_shape_mismatch(model_path, checkpoint, getattr(self, "cfg", None)):
                load_trainable_state_dict(self._models[name], checkpoint["state_dict"],
                                          source=f'Checkpoint "{model_path}"')
            self._model_epoch = checkpoint.get("epoch")

    def write_final_results(self, output_dir=None):
        """Atomically write ``results.json`` (split and metrics of the latest test, and the
        run's identity) into the output folder. Its presence marks the run as complete."""
        output_dir = output_dir or self.output_dir
        split, metrics = self._last_test if self._last_test is not None else (None, {})
        cfg = getattr(self, "cfg", None)
        payload = {
            "split": split,
            "metrics": {k: float(v) for k, v in metrics.items()},
            "trainer": cfg.TRAINER.NAME if cfg is not None else type(self).__name__,
            "dataset": cfg.DATASET.NAME if cfg is not None else "",
            "model_epoch": self._model_epoch,
            "identity": dict(self.identity),
        }
        path = osp.join(output_dir, RESULTS_FILE)
        if dist.is_main_process():
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

    # ---------------------------------------------------------------- scalars
    def init_writer(self, log_dir):
        if self.__dict__.get("_writer") is not None or not dist.is_main_process():
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
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None

    def write_scalar(self, tag, scalar_value, global_step=None):
        """To TensorBoard (when a writer is open) and, as one row, to ``metrics.csv``."""
        if scalar_value is None or not dist.is_main_process():
            return
        if self._writer is not None:
            self._writer.add_scalar(tag, scalar_value, global_step)
        output_dir = getattr(self, "output_dir", "")
        if output_dir:
            if self._metrics_file is None:
                path = osp.join(output_dir, METRICS_FILE)
                new = not osp.exists(path)
                self._metrics_file = open(path, "a", newline="")  # appended to on resume
                self._metrics_csv = csv.writer(self._metrics_file)
                if new:
                    self._metrics_csv.writerow(["tag", "step", "value", "wall_time"])
            try:
                self._metrics_csv.writerow([tag, global_step, f"{float(scalar_value):.6g}", f"{time.time():.3f}"])
                self._metrics_file.flush()
            except OSError as exc:  # a full disk: one message, not a traceback
                raise OutputWriteError(
                    f'Cannot write "{osp.join(output_dir, METRICS_FILE)}": {exc.strerror or exc}. Free space '
                    "(or make the folder writable) and run the same command again to resume.") from None

    # ---------------------------------------------------------------- loop
    def train(self, start_epoch, max_epoch):
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()
        if not self.get_model_names():
            print("Nothing to train: no model is registered")
        else:
            with StopOnSignal() as self._stop:
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

    def _optimizers(self, names=None):
        """The optimisers of the given (default: all) registered models, in registration order."""
        return [self._optims[name] for name in self.get_model_names(names) if self._optims[name] is not None]

    def model_zero_grad(self, names=None):
        for optim in self._optimizers(names):
            optim.zero_grad()

    def model_backward(self, loss):
        """Check the loss, then backpropagate it (scaled, when the trainer has a gradient scaler)."""
        self.detect_anomaly(loss)
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()

    def sync_gradients(self, names=None):
        """Average the gradients over processes (a no-op in a one-process run)."""
        params = [p for name in self.get_model_names(names) for p in self._models[name].parameters()]
        dist.all_reduce_gradients(params, self._batch_weight)

    def model_update(self, names=None):
        """Step the optimisers of ``names`` on the averaged gradients. With a gradient scaler, each
        step goes through it (skipped when a gradient is inf/NaN) and the scale is then updated:
        so step all models of a loss in one call."""
        self.sync_gradients(names)  # before the scaler looks for inf: every process skips alike
        for optim in self._optimizers(names):
            if self.scaler is None:
                optim.step()
            else:
                self.scaler.step(optim)
        if self.scaler is not None:
            self.scaler.update()

    def model_backward_and_update(self, loss, names=None):
        """One training step on ``loss``: zero the gradients, backpropagate, average them over
        processes, step every optimiser (through the gradient scaler, if any)."""
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
        dist.check_distributed_batch(cfg)
        # Data first: few-shot sampling must be the first consumer of the seeded RNG.
        self.build_data_loader()
        # Every process continues from rank 0's RNG state (a cache hit on one rank and a
        # miss on another must not make them draw different batches).
        set_rng_state(dist.broadcast_object(get_rng_state()))
        self.build_model()
        for name in self.get_model_names():
            dist.broadcast_parameters(self._models[name].parameters())
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
        if dist.is_main_process() and osp.exists(stale_marker):
            os.remove(stale_marker)
        self.start_epoch = self.resume_model_if_exist(directory)
        self.init_writer(osp.join(self.output_dir, "tensorboard"))
        self._warn_if_val_is_test()
        self.time_start = time.time()
        self._batches_run = 0  # batches trained by this process (for the ETA)

    def _warn_if_val_is_test(self):
        dataset = getattr(getattr(self, "dm", None), "dataset", None)
        if (self.cfg.TEST.FINAL_MODEL == "best_val" and dataset is not None
                and dataset.val is not None and dataset.val is dataset.test):
            print(f"Warning: TEST.FINAL_MODEL=best_val selects on the val split, but "
                  f"{self.cfg.DATASET.NAME} uses its test set as val: the reported test "
                  "accuracy is then optimistic")

    def after_train(self):
        self.report_skipped_images("training", "training")
        print("Finish training")
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                print("Deploy the model with the best val performance")
                dist.barrier()  # rank 0 has written model-best
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
            self.remove_last_checkpoint(self.output_dir)
        else:  # not kept by CHECKPOINT_FREQ, but a killed run resumes from here
            self.save_model(self.epoch, self.output_dir, model_name=LAST_CHECKPOINT)

    @torch.no_grad()
    def test(self, split=None):
        """Evaluate on ``split`` (default ``TEST.SPLIT``; "val" falls back to "test"
        when there is no val set) and return the first metric (accuracy).

        In a distributed run each process evaluates a contiguous shard and the outputs
        are gathered in order, so every image counts once, as in one process."""
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
        data_loader = dist.shard_for_evaluation(data_loader)
        progress = EvaluationProgress(len(data_loader))
        shard = []
        # The progress bar goes to the terminal only; log.txt gets a line every ~10%.
        for batch_idx, batch in enumerate(tqdm(data_loader, file=console_stream(), disable=None)):
            if not self.count_readable(batch, data_loader, "evaluation"):
                continue
            input, label = self.parse_batch_test(batch)
            output = self.model_inference(input)
            if dist.is_distributed():
                shard.append((output.float().cpu(), label.cpu()))
            else:
                self.evaluator.process(output, label)
            progress.update(batch_idx)
        if dist.is_distributed():
            for outputs in dist.gather_in_rank_order(shard):
                for output, label in outputs:
                    self.evaluator.process(output, label)
        self.report_skipped_images("evaluation", f"the {split} set")
        results = self.evaluator.evaluate()
        for k, v in results.items():
            self.write_scalar(f"{split}/{k}", v, self.epoch)
        self._last_test = (split, results)
        return list(results.values())[0]

    def model_inference(self, input):
        return self.model(input)

    def count_readable(self, batch, loader, phase):
        """False for a batch of only unreadable images (DATALOADER.SKIP_BAD_IMAGES); counts the
        images left out per phase ("training" or "evaluation"), reported at the phase's end."""
        counts = self.__dict__.setdefault("_skipped_images", {})
        if batch is None:
            counts[phase] = counts.get(phase, 0) + loader.batch_size
            return False
        if "n_skipped" in batch:
            counts[phase] = counts.get(phase, 0) + int(batch.pop("n_skipped"))
        return True

    def report_skipped_images(self, phase, where):
        skipped = self.__dict__.get("_skipped_images", {}).pop(phase, 0)
        if skipped:
            print(f"Warning: {skipped} unreadable image(s) were left out of {where} "
                  "(DATALOADER.SKIP_BAD_IMAGES); the warnings above name the files")

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
        epoch_rng_state = get_rng_state()  # stored if the epoch is interrupted
        skip, rng_at_stop = getattr(self, "_resume_position", None) or (0, None)
        self._resume_position = None

        end = time.time()
        for self.batch_idx, batch in enumerate(self.train_loader_x):
            if self.batch_idx < skip:  # done before the interruption: replay the data order only
                if self.batch_idx + 1 == skip:
                    set_rng_state(rng_at_stop)
                end = time.time()
                continue
            if not self.count_readable(batch, self.train_loader_x, "training"):
                if self.batch_idx + 1 == self.num_batches:
                    self.update_lr()  # trainers step the LR on the last batch, which is gone
                continue
            data_time.update(time.time() - end)
            batch, self._batch_weight = dist.shard_batch(batch)
            with self._stop.deferred():
                loss_summary = self.forward_backward(batch)
            loss_summary = dist.all_reduce_mean(to_floats(loss_summary), self._batch_weight)
            batch_time.update(time.time() - end)
            losses.update(loss_summary)
            self._batches_run += 1

            meet_freq = (self.batch_idx + 1) % print_freq == 0
            only_few_batches = self.num_batches < print_freq
            if meet_freq or only_few_batches:
                print(self._epoch_line(losses, batch_time, data_time))

            n_iter = self.epoch * self.num_batches + self.batch_idx
            for name, meter in losses.meters.items():
                self.write_scalar("train/" + name, meter.avg, n_iter)
            self.write_scalar("train/lr", self.get_current_lr(), n_iter)
            if dist.all_reduce_flag(self._stop.requested):
                self._stop_after_batch(epoch_rng_state)
            end = time.time()

    def _stop_after_batch(self, epoch_rng_state):
        """Save the position inside the epoch (rolling checkpoint) and stop training."""
        done = self.batch_idx + 1
        self.save_model(self.epoch - 1, self.output_dir, model_name=LAST_CHECKPOINT,
                        extra={"batches_done": done, "epoch_rng_state": epoch_rng_state})
        dist.barrier()  # no process exits (and gets the others stopped) before rank 0 has saved
        signum = self._stop.signum or signal.SIGTERM
        name = signal.Signals(signum).name
        raise TrainingInterrupted(signum, (
            f"Stopped by {name} after epoch {self.epoch + 1} batch {done}/{self.num_batches}; the "
            f"progress is saved in {self.output_dir} ({LAST_CHECKPOINT}). Run the same command "
            "again to resume exactly where it stopped."))

    def _epoch_line(self, losses, batch_time, data_time):
        nb_remain = (self.num_batches - self.batch_idx - 1)
        nb_remain += (self.max_epoch - self.epoch - 1) * self.num_batches
        # The pace of the whole run so far, not of this epoch: it includes evaluations
        # and does not jump at epoch boundaries.
        pace = (time.time() - self.time_start) / max(self._batches_run, 1)
        eta = str(datetime.timedelta(seconds=int(pace * nb_remain)))
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


# ---------------------------------------------------------------------- helpers
def to_floats(summary):
    return {k: float(v.item() if isinstance(v, torch.Tensor) else v) for k, v in summary.items()}


class EvaluationProgress:
    """A line in log.txt about every 10% of a long evaluation (the tqdm bar is terminal-only)."""

    def __init__(self, num_batches, min_batches=20):
        self.num_batches = num_batches
        self.every = math.ceil(num_batches / 10) if num_batches >= min_batches else 0
        self.start = time.time()

    def update(self, batch_idx):
        done = batch_idx + 1
        if not self.every or done % self.every or done == self.num_batches:
            return
        elapsed = time.time() - self.start
        eta = elapsed / done * (self.num_batches - done)
        print(f"evaluated batch [{done}/{self.num_batches}] elapsed "
              f"{datetime.timedelta(seconds=int(elapsed))} eta {datetime.timedelta(seconds=int(eta))}")


