"""Nothing silent, nothing lost: faults and bad input through train.py give one clear message and
an exit code (2 for bad input), and no run overwrites another's files."""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

import train
from dassl.utils import atomic_write_bytes
from dassl.utils.errors import OutputWriteError
from datasets.fake import make_fake_dataset
from train_runs import error_of, exit_code, restore_streams  # noqa: F401  (fixture)
from train_runs import train_argv as argv  # CoOp on caltech101 unless told otherwise

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_fake_dataset("caltech101", str(root), num_classes=4, images_per_class=6)
    return str(root)


def zero_shot(data_root, clip_path, out, opts=()):
    return argv(data_root, clip_path, out, "ZeroshotCLIP", "vit_b16", flags=("--eval-only",), opts=opts)


@pytest.fixture(scope="module")
def trained(data_root, tiny_clip_path, tmp_path_factory):
    """CoOp, 2 epochs, both checkpoints kept."""
    out = tmp_path_factory.mktemp("trained") / "coop"
    assert exit_code(argv(data_root, tiny_clip_path, out, opts=(
        "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1", "DATASET.NUM_SHOTS", "2"))) == 0
    return out


# ------------------------------------------------------------------ one run per folder
def test_a_live_lock_refuses_a_second_run_and_a_stale_one_is_taken_over(data_root, tiny_clip_path,
                                                                          tmp_path, capsys):
    out = tmp_path / "locked"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time; sys.path.insert(0, {ROOT!r})
        from dassl.utils.run_lock import OutputLock
        OutputLock({str(out)!r}).acquire(); print("locked", flush=True); time.sleep(60)""")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        err = error_of(capsys, zero_shot(data_root, tiny_clip_path, out))
        assert f"PID {holder.pid}" in err and "in use" in err and str(out) in err
        assert not (out / "log.txt").exists()  # refused before writing anything
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now: its lock is stale and is taken over
    assert exit_code(zero_shot(data_root, tiny_clip_path, out)) == 0
    assert "taking over the lock" in capsys.readouterr().out
    assert not (out / "run.lock").exists()  # released at the end


def test_a_finished_run_of_another_seed_is_not_overwritten(data_root, tiny_clip_path, tmp_path, capsys):
    out = tmp_path / "seeded"
    assert exit_code(zero_shot(data_root, tiny_clip_path, out)) == 0
    results = (out / "results.json").read_text()
    identity = json.loads(results)["identity"]
    assert identity["seed"] == 1 and identity["trainer"] == "ZeroshotCLIP" and identity["config"] == "vit_b16"
    assert identity["dataset"] == "Caltech101" and identity["num_shots"] == -1
    args = zero_shot(data_root, tiny_clip_path, out)
    args[args.index("--seed") + 1] = "2"
    err = error_of(capsys, args)
    assert "seed: 1 there, 2 here" in err and "another --output-dir" in err
    assert (out / "results.json").read_text() == results


# ------------------------------------------------------------------ checkpoints
def test_eval_only_without_load_epoch_uses_the_newest_checkpoint(data_root, tiny_clip_path, trained,
                                                                 tmp_path, capsys):
    out = tmp_path / "eval"
    assert exit_code(argv(data_root, tiny_clip_path, out, flags=("--eval-only", "--model-dir", str(trained)))) == 0
    log = (out / "log.txt").read_text()
    assert "No --load-epoch given: using model.pth.tar-2, the newest checkpoint" in log
    assert "(epoch = 2)" in log


def test_truncated_foreign_and_misshapen_checkpoints_are_named(data_root, tiny_clip_path, trained,
                                                               tmp_path, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(trained, model_dir)
    ckpt = model_dir / "prompt_learner" / "model.pth.tar-2"
    eval_only = ("--eval-only", "--model-dir", str(model_dir), "--load-epoch", "2")

    shape = argv(data_root, tiny_clip_path, tmp_path / "e1", flags=eval_only,
                 opts=("TRAINER.COOP.CTX_INIT", "''", "TRAINER.COOP.N_CTX", "2"))
    err = error_of(capsys, shape)
    assert str(ckpt) in err and "ctx" in err and "[4, 64]" in err and "[2, 64]" in err
    assert "TRAINER.COOP.N_CTX" in err and "TRAINER.COOP.CTX_INIT" in err

    torch.save({"weights": torch.zeros(2)}, ckpt)
    err = error_of(capsys, argv(data_root, tiny_clip_path, tmp_path / "e2", flags=eval_only))
    assert str(ckpt) in err and 'no "state_dict"' in err

    ckpt.write_bytes(open(trained / "prompt_learner" / "model.pth.tar-2", "rb").read()[:300])
    err = error_of(capsys, argv(data_root, tiny_clip_path, tmp_path / "e3", flags=eval_only))
    assert str(ckpt) in err and "truncated" in err


# ------------------------------------------------------------------ stop signals
def test_sigterm_during_training_saves_and_exits_143_then_resumes(data_root, tiny_clip_path, tmp_path,
                                                                  capsys, monkeypatch):
    from trainers.coop import CoOp
    step = CoOp.forward_backward

    def signalled_step(self, batch):
        if self.epoch == 0 and self.batch_idx == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, batch)

    out = tmp_path / "stopped"
    args = argv(data_root, tiny_clip_path, out, opts=(
        "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "2"))
    monkeypatch.setattr(CoOp, "forward_backward", signalled_step)
    err = error_of(capsys, args, code=128 + signal.SIGTERM)
    assert "Stopped by SIGTERM after epoch 1 batch 2/4" in err and "same command again" in err
    assert (out / "prompt_learner" / "model-last.pth.tar").is_file() and not (out / "run.lock").exists()
    monkeypatch.setattr(CoOp, "forward_backward", step)
    assert exit_code(args) == 0
    log = max(out.glob("log.txt-*")).read_text()  # log.txt holds the stopped run's log
    assert "Resuming inside epoch 1 after batch 2" in log and "epoch [1/1] batch [3/4]" in log
    assert (out / "results.json").is_file()


# ------------------------------------------------------------------ command line and folders
def test_options_after_the_key_value_list_name_the_flag_to_move(capsys):
    with pytest.raises(SystemExit) as info:
        train.parse_args(["--root", "d", "OPTIM.MAX_EPOCH", "1", "--eval-only"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--eval-only comes after the KEY VALUE options" in err and "move it before" in err


def test_a_misspelt_trainer_fails_before_torch_loads_and_writes_nothing(tmp_path):
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); import train\n"
            "try:\n    train.main(['--trainer', 'MuDTP', '--output-dir', %r])\n"
            "except SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules)\n" % str(tmp_path / "o"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.stdout.strip() == "exit 2 False"
    assert "Unknown trainer [MuDTP]" in proc.stderr and "do you mean [MuDPT]" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["file", "proc"])
def test_an_unusable_output_folder_is_named(data_root, tiny_clip_path, tmp_path, capsys, where):
    if where == "file":
        out = tmp_path / "a_file"
        out.write_text("not a folder")
        expected = "is a file"
    else:
        out, expected = "/proc/no_such_folder/out", "Cannot create the output folder"
    err = error_of(capsys, zero_shot(data_root, tiny_clip_path, out))
    assert str(out) in err and expected in err


def test_a_full_disk_names_the_file_and_leaves_no_partial_file(tmp_path):
    def write(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    target = tmp_path / "model.pth.tar-1"
    with pytest.raises(OutputWriteError, match="No space left on device") as info:
        atomic_write_bytes(str(target), write)
    assert str(target) in str(info.value)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ images
def test_an_unreadable_image_stops_at_its_batch_or_is_skipped_on_request(tiny_clip_path, tmp_path, capsys):
    root = tmp_path / "data"
    make_fake_dataset("caltech101", str(root), num_classes=4, images_per_class=6)
    folder = root / "caltech-101"
    split = json.loads((folder / "split_zhou_Caltech101.json").read_text())
    images = [folder / "101_ObjectCategories" / entry[0] for entry in split["test"][:2]]
    images[0].write_bytes(images[0].read_bytes()[:100])  # truncated
    images[1].write_bytes(b"")  # zero bytes
    err = error_of(capsys, zero_shot(str(root), tiny_clip_path, tmp_path / "z1"))
    assert "Cannot read image" in err and "split of Caltech101" in err and "SKIP_BAD_IMAGES" in err

    assert exit_code(zero_shot(str(root), tiny_clip_path, tmp_path / "z2",
                          opts=("DATALOADER.SKIP_BAD_IMAGES", "True"))) == 0
    log = (tmp_path / "z2" / "log.txt").read_text()
    assert "Warning: skipping an image of the test split of Caltech101" in log
    skipped = [line for line in log.splitlines() if "were left out of the test set" in line]
    assert len(skipped) == 1 and skipped[0].startswith("Warning: ")


# ------------------------------------------------------------------ file modes
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_written_file_follows_the_umask(tiny_clip_path, tmp_path, umask):
    root = tmp_path / "data"
    make_fake_dataset("caltech101", str(root), num_classes=4, images_per_class=6)
    before = {p for p in root.rglob("*")}
    out = tmp_path / "out"
    previous = os.umask(umask)
    try:
        assert exit_code(argv(str(root), tiny_clip_path, out, opts=(
            "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "2"))) == 0
    finally:
        os.umask(previous)
    written = [p for p in out.rglob("*") if p.is_file()] + [
        p for p in root.rglob("*") if p.is_file() and p not in before]
    names = {p.name for p in written}
    assert {"log.txt", "config.yaml", "results.json", "metrics.csv", "model.pth.tar-1", "checkpoint"} <= names
    assert any(p.parent.name == "split_fewshot" for p in written)  # the few-shot cache in the data root
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
