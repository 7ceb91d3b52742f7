"""Nothing silent, one clear line: a rerun with other settings, a run of another trainer, a file that
is no checkpoint, a full disk, Ctrl-C with data-loader workers or during evaluation, a dead lock
holder, and the seed summary of resumed runs. Each case through train.py (or parse_test_res.py)
as a user meets it."""
import errno
import io
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
import torch

import parse_test_res
from dassl.utils.logger import Logger
from dassl.utils.run_lock import OutputLock
from train_runs import error_of, exit_code, restore_streams  # noqa: F401  (fixture)
from train_runs import train_argv as argv  # CoOp on caltech101 unless told otherwise
from test_run_safety import data_root, trained  # noqa: F401  (fixtures: a small Caltech101, CoOp on it)

SMALL = ("DATASET.NUM_SHOTS", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "2")  # 4 batches an epoch


def eval_only(model_dir, epoch="2"):
    return ("--eval-only", "--model-dir", str(model_dir), "--load-epoch", epoch)


def stop_in_step(monkeypatch, signum, epoch=0, batch=1, workers_too=False):
    """CoOp's step sends ``signum`` once, at (epoch, batch): to this process and, as Ctrl-C in a
    terminal does (the whole process group), to the data-loader workers."""
    from trainers.coop import CoOp
    step = CoOp.forward_backward
    earlier = {p.pid for p in multiprocessing.active_children()}  # not this run's loader workers

    def signalled(self, batch_):
        if (self.epoch, self.batch_idx) == (epoch, batch):
            if workers_too:
                workers = [p for p in multiprocessing.active_children() if p.pid not in earlier]
                assert workers, "the loader runs no worker processes"
                for worker in workers:
                    os.kill(worker.pid, signum)
            os.kill(os.getpid(), signum)
        return step(self, batch_)

    monkeypatch.setattr(CoOp, "forward_backward", signalled)
    return lambda: monkeypatch.setattr(CoOp, "forward_backward", step)


# ------------------------------------------------------------------ the run's identity
def test_a_rerun_with_other_training_settings_is_refused_naming_the_keys(data_root, tiny_clip_path,
                                                                         tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    opts = ("OPTIM.MAX_EPOCH", "1", *SMALL)
    restore = stop_in_step(monkeypatch, signal.SIGTERM)
    assert exit_code(argv(data_root, tiny_clip_path, out, opts=opts)) == 128 + signal.SIGTERM
    restore()
    config = (out / "config.yaml").read_text()
    err = error_of(capsys, argv(data_root, tiny_clip_path, out, opts=opts + ("OPTIM.LR", "0.5")))
    assert f'"{out}" holds a run with other settings (OPTIM.LR: 0.002 there, 0.5 here)' in err
    assert (out / "config.yaml").read_text() == config  # refused before anything was written
    assert [p.name for p in out.glob("log.txt*")] == ["log.txt"]
    # how often to print or how many workers load does not change the numbers: it resumes
    assert exit_code(argv(data_root, tiny_clip_path, out, opts=opts + ("TRAIN.PRINT_FREQ", "1"))) == 0
    assert (out / "results.json").is_file()
    # a finished run is not extended: 2 epochs are another schedule, so another run
    err = error_of(capsys, argv(data_root, tiny_clip_path, out, opts=opts + ("OPTIM.MAX_EPOCH", "2")))
    assert "OPTIM.MAX_EPOCH: 1 there, 2 here" in err and "another --output-dir" in err
    assert "LR schedule" in err


# ------------------------------------------------------------------ another trainer's run
def test_a_run_of_another_trainer_is_named_at_evaluation(data_root, tiny_clip_path, trained, tmp_path,
                                                         capsys):
    err = error_of(capsys, argv(data_root, tiny_clip_path, tmp_path / "kg", "KgCoOp", "vit_b16_ep100_ctxv1",
                                flags=eval_only(trained)))
    assert f'--model-dir "{trained}" holds a CoOp run (from its results.json), not a KgCoOp one' in err
    assert "--trainer CoOp" in err
    assert not (tmp_path / "kg" / "results.json").exists()

    mudpt = tmp_path / "mudpt"
    (mudpt / "MultimodalDeepPromptTuning").mkdir(parents=True)
    (mudpt / "config.yaml").write_text("TRAINER:\n  NAME: MuDPT\n")
    err = error_of(capsys, argv(data_root, tiny_clip_path, tmp_path / "e", flags=eval_only(mudpt, "10")))
    assert f'--model-dir "{mudpt}" holds a MuDPT run (from its config.yaml), not a CoOp one' in err

    # a checkpoint without a recorded identity (as the original code writes them): the key check
    bare = tmp_path / "bare" / "prompt_learner"
    shutil.copytree(trained / "prompt_learner", bare)
    checkpoint = torch.load(bare / "model.pth.tar-2", weights_only=True)
    del checkpoint["identity"], checkpoint["config"]
    torch.save(checkpoint, bare / "model.pth.tar-2")
    err = error_of(capsys, argv(data_root, tiny_clip_path, tmp_path / "cc", "CoCoOp",
                                "vit_b16_c4_ep10_batch1_ctxv1", flags=eval_only(bare.parent)))
    assert "missing keys ['meta_net" in err and "another trainer" in err


# ------------------------------------------------------------------ not a checkpoint at all
def test_a_file_that_is_no_checkpoint_is_named_at_evaluation_and_at_resume(data_root, tiny_clip_path,
                                                                           trained, tmp_path, capsys,
                                                                           monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    garbage = run / "prompt_learner" / "model.pth.tar-2"
    garbage.write_text("garbage")
    for allow_pickle in ("0", "1"):  # "set DASSL_ALLOW_PICKLE=1" is no way out for it
        monkeypatch.setenv("DASSL_ALLOW_PICKLE", allow_pickle)
        err = error_of(capsys, argv(data_root, tiny_clip_path, tmp_path / f"e{allow_pickle}",
                                    flags=eval_only(run)))
        assert f'"{garbage}" is not a checkpoint' in err and "pickled" not in err
    # the same file as the newest checkpoint of an interrupted run that is run again
    (run / "results.json").unlink()
    err = error_of(capsys, argv(data_root, tiny_clip_path, run, opts=(
        "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1", "DATASET.NUM_SHOTS", "2")))
    assert f'"{garbage}" is not a checkpoint' in err


# ------------------------------------------------------------------ disk full
class FullDisk(io.RawIOBase):
    """Takes the first kilobyte, then the disk is full."""

    def __init__(self, target):
        super().__init__()
        self.target, self.room = target, 1024

    def writable(self):
        return True

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.target.write(data)


def test_a_full_disk_while_saving_names_folder_file_and_the_last_complete_checkpoint(
        data_root, tiny_clip_path, tmp_path, capsys, monkeypatch):
    save = torch.save

    def save_on_a_full_disk(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            f = FullDisk(f)  # torch reports it as "RuntimeError: [enforce fail at inline_container.cc]"
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    out = tmp_path / "full"
    err = error_of(capsys, argv(data_root, tiny_clip_path, out, opts=(
        "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1", "DATASET.NUM_SHOTS", "2")), code=1)
    folder = out / "prompt_learner"
    assert (f'No space left on "{folder}" while writing "{folder / "model.pth.tar-2"}"; the last complete '
            f'checkpoint is "{folder / "model.pth.tar-1"}"; free space and run the same command again '
            "to resume from it") in err
    assert "enforce fail" not in err
    assert sorted(os.listdir(folder)) == ["checkpoint", "model.pth.tar-1"]  # nothing half-written
    assert not (out / "run.lock").exists()


def test_the_log_tee_survives_a_full_disk(capsys):
    class Full(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    import sys
    tee = Logger(sys.stdout, Full())
    tee.write("first\n")
    tee.write("second\n")
    tee.flush()
    out = capsys.readouterr().out
    assert "first\n" in out and "second\n" in out
    assert out.count("log file can no longer be written") == 1


# ------------------------------------------------------------------ stop signals
def test_ctrl_c_with_loader_workers_saves_the_position_and_exits_130(data_root, tiny_clip_path, tmp_path,
                                                                     capfd, monkeypatch):
    out = tmp_path / "workers" / "seed1"
    args = argv(data_root, tiny_clip_path, out, opts=(
        "OPTIM.MAX_EPOCH", "1", *SMALL, "DATALOADER.NUM_WORKERS", "2"))
    restore = stop_in_step(monkeypatch, signal.SIGINT, workers_too=True)
    assert exit_code(args) == 128 + signal.SIGINT
    time.sleep(0.2)  # a worker's dying words would come now
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"train.py: error: Stopped by SIGINT after epoch 1 batch 2/4; the progress is saved "
                     f"in {out} (model-last.pth.tar). Run the same command again to resume exactly where "
                     "it stopped."], err
    saved = torch.load(out / "prompt_learner" / "model-last.pth.tar", weights_only=True)
    assert saved["batches_done"] == 2 and not (out / "run.lock").exists()
    restore()
    # resumed, the run's result is in the second log, and the seed summary finds it
    assert exit_code(args) == 0
    assert parse_test_res.main([str(out.parent)]) == 0
    assert f"file: {max(out.glob('log.txt-*'))}. accuracy:" in capfd.readouterr().out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_during_evaluation_is_one_line_and_releases_the_lock(data_root, tiny_clip_path,
                                                                           tmp_path, capsys, monkeypatch,
                                                                           signum):
    from dassl.engine import trainer
    monkeypatch.setattr(trainer.EvaluationProgress, "update",
                        lambda self, batch_idx: os.kill(os.getpid(), signum))
    out = tmp_path / "zs"
    err = error_of(capsys, argv(data_root, tiny_clip_path, out, "ZeroshotCLIP", "vit_b16", flags=("--eval-only",)),
                   code=128 + signum)
    assert err.strip().splitlines() == [
        f"train.py: error: Stopped by {signal.Signals(signum).name} during evaluation; no result was "
        "written. Run the same command again to evaluate."]
    assert not (out / "run.lock").exists() and not (out / "results.json").exists()


# ------------------------------------------------------------------ a zombie holds the lock
def test_a_zombie_holder_of_the_lock_is_dead(tmp_path, capsys):
    from dassl.utils.run_lock import LOCK_NAME, _process_start
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / LOCK_NAME).write_text(json.dumps({
            "host": socket.gethostname(), "pid": holder.pid, "started": "now",
            "process_start": _process_start(holder.pid)}))
        holder.kill()  # not waited for: a zombie until its parent reaps it
        deadline = time.time() + 5
        while not open(f"/proc/{holder.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
            assert time.time() < deadline
            time.sleep(0.01)
        lock = OutputLock(str(tmp_path)).acquire()
        assert "taking over the lock of a run that is no longer alive" in capsys.readouterr().out
        lock.release()
    finally:
        holder.wait()


# ------------------------------------------------------------------ the seed summary
def test_the_seed_summary_reads_the_log_a_resumed_run_finished_in(tmp_path, capsys):
    from test_parse_test_res import CRASHED_LOG, train_log, write
    root = tmp_path / "dtd"
    for seed in (1, 2):
        write(f"{root}/seed{seed}/log.txt", CRASHED_LOG)  # stopped, then resumed by a rerun
        write(f"{root}/seed{seed}/log.txt-2024-05-0{seed}-10-00-00", CRASHED_LOG)  # stopped again
        write(f"{root}/seed{seed}/log.txt-2024-05-0{seed}-11-00-00", train_log(60.0 + seed))
        write(f"{root}/seed{seed}/log.txt-2024-05-0{seed}-12-00-00", "refused\n")  # a later refused rerun
    assert parse_test_res.main([str(root)]) == 0
    out = capsys.readouterr().out
    assert f"file: {root}/seed2/log.txt-2024-05-02-11-00-00. accuracy: 62.00%. " in out
    assert "* accuracy: 61.50% +- 0.50%" in out


def test_multi_exp_one_level_too_high_names_the_level_to_pass(tmp_path, capsys):
    from test_parse_test_res import train_log, write
    root = tmp_path / "output"
    for method in ("CoOp", "MuDPT"):
        write(f"{root}/{method}/vit_b16/seed1/log.txt", train_log(60.0))
    with pytest.raises(SystemExit) as info:
        parse_test_res.main([str(root), "--multi-exp"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert (f"{root} is one level too high for --multi-exp, which reads DIR/<experiment>/<seed>/log.txt: "
            f"pass one of {root}/CoOp, {root}/MuDPT") in err
    with pytest.raises(SystemExit):
        parse_test_res.main([str(root / "CoOp")])  # without --multi-exp: one level too high as well
    assert "add --multi-exp" in capsys.readouterr().err


# ------------------------------------------------------------------ CTX_INIT decides N_CTX
@pytest.fixture(scope="module")
def small_clip():
    from trainers.clip_prompting import tiny_clip
    return tiny_clip(image_resolution=32, layers=2, patch_size=16)


@pytest.mark.parametrize("module, model, node, default", [
    ("coop", "CoOpCLIP", "COOP", 16), ("cocoop", "CoCoOpCLIP", "COCOOP", 16), ("kgcoop", "KgCoOpCLIP", "KGCOOP", 4)])
def test_an_explicit_n_ctx_that_ctx_init_overrides_gets_one_note(small_clip, capsys, module, model, node, default):
    import importlib

    import trainers
    cls = getattr(importlib.import_module(f"trainers.{module}"), model)
    built = cls(trainers.build_cfg(node, N_CTX=2, CTX_INIT="a photo of a"), ["dog", "cat"], small_clip)
    assert built.prompt_learner.ctx.shape == (4, built.text_encoder.width)  # as the original
    out = capsys.readouterr().out
    assert out.count(f"Note: TRAINER.{node}.N_CTX 2 is not used") == 1
    assert 'CTX_INIT "a photo of a" has 4 tokens, so the context has 4 vectors' in out
    cls(trainers.build_cfg(node, N_CTX=default, CTX_INIT="a photo of a"), ["dog", "cat"], small_clip)
    assert "Note:" not in capsys.readouterr().out  # the node's default is no choice of the user's
