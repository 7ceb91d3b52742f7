"""KgCoOp, PromptSRC, MMA and CLIP-LoRA end to end with the tiny CLIP on generated data: base-to-new
through the scripts, PromptSRC's aggregated prompts saved and evaluated, CLIP-LoRA's iteration schedule."""
import os
import re
import subprocess

import pytest
import torch

import train
from dassl.utils.logger import close_logger
from datasets.fake import make_fake_dataset
from train_runs import base2new_through_scripts, restore_streams, train_argv  # noqa: F401  (fixture)
from results.provenance import read_method_settings
from trainers.promptsrc import gaussian_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_fake_dataset("eurosat", str(root), num_classes=4, images_per_class=6)
    return str(root)


def trainable_count(log):
    return int(re.search(r"^# trainable params: ([\d,]+)", log, re.M).group(1).replace(",", ""))


@pytest.mark.parametrize("method, trainer, config, folder, setting, opts", [
    ("kgcoop", "KgCoOp", "vit_b16_ep100_ctxv1", "prompt_learner", ("W", "8.0"), []),
    ("promptsrc", "PromptSRC", "vit_b16_c2_ep20_batch4_4+4ctx", "VLPromptLearner", ("GPA_MEAN", "15"), []),
    ("mma", "MMA", "vit_b16_ep5", "adapter_learner", ("ADAPTER_START", "5"), []),
    ("cliplora", "CLIPLoRA", "vit_b16_r2", "lora", ("RANK", "2"), ["TRAINER.CLIPLORA.N_ITERS", "0"]),  # one pass
])
def test_base2new_through_the_scripts(data_root, tiny_clip_path, tmp_path, method, trainer, config, folder, setting,
                                      opts):
    run, train_log, test_log = base2new_through_scripts(method, "eurosat", data_root, tiny_clip_path, tmp_path,
                                                        ["OPTIM.MAX_EPOCH", "1", *opts])
    assert run.parts[-3:] == (trainer, config, "seed1")
    state = torch.load(run / folder / "model.pth.tar-1", weights_only=True)["state_dict"]
    assert sum(v.numel() for v in state.values()) == trainable_count(train_log)  # trainable tensors only
    settings, params = read_method_settings(str(run / "log.txt"), trainer)  # what the provenance rows show
    assert settings[setting[0]] == setting[1] and params.replace(",", "") == str(trainable_count(train_log))
    assert "(epoch = 1)" in test_log


@pytest.mark.parametrize("method, protocol, args, config", [
    ("kgcoop", "few_shot", ["dtd", "1", "4"], "KgCoOp/vit_b16_ep100_ctxv1"),
    ("promptsrc", "base2new_test", ["dtd", "1"], "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx"),
    ("promptsrc", "xd_test", ["imagenet_r", "1"], "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets"),
    ("promptsrc", "few_shot", ["caltech101", "1", "2"], "PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot"),
    ("promptsrc", "few_shot", ["eurosat", "1", "2"], "PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot_gpa45"),
    ("mma", "base2new_train", ["imagenet", "1"], "MMA/vit_b16_ep5_imnet"),
    ("mma", "base2new_train", ["dtd", "1"], "MMA/vit_b16_ep5"),
    ("mma", "xd_train", ["1"], "MMA/vit_b16_ep5_imnet"),
    ("cliplora", "xd_test", ["dtd", "1"], "CLIPLoRA/vit_b16_r2"),
])
def test_scripts_pick_the_released_configs(method, protocol, args, config):
    env = dict(os.environ, DRY_RUN="1", OUTPUT="/nonexistent-output")
    done = subprocess.run(["bash", f"scripts/{method}/{protocol}.sh", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"--config-file configs/trainers/{config}.yaml " in done.stdout
    if config == "CLIPLoRA/vit_b16_r2":
        assert "--load-epoch 16 " in done.stdout  # the 16-shot run's NUM_SHOTS epochs


def test_mma_has_no_released_few_shot_protocol():
    done = subprocess.run(["bash", "scripts/mma/few_shot.sh", "dtd", "1"], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, DRY_RUN="1"))
    assert done.returncode == 2 and "names no config for the few_shot protocol" in done.stderr


def train_in_process(data_root, clip_path, out, trainer, config, opts):
    """train.py's own steps, returning the trainer so a test can look inside."""
    args = train.parse_args(train_argv(data_root, clip_path, out, trainer, config, dataset="eurosat", opts=opts))
    return args, train.prepare(args)


GPA_RUN = ["OPTIM.MAX_EPOCH", "3", "TRAINER.PROMPTSRC.GPA_MEAN", "2", "TRAINER.PROMPTSRC.GPA_STD", "1",
           "DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", "base"]
TWO_TEMPLATES = ("a photo of a {}.", "a sketch of the {}.")  # a cheaper teacher, averaged the same way


class Killed(Exception):
    pass


def run_promptsrc(data_root, clip_path, out, monkeypatch, stop_after_epoch=None):
    """A 3-epoch PromptSRC run; returns (prompts after each epoch, accuracies tested, trainer)."""
    monkeypatch.setattr("trainers.promptsrc.TEACHER_TEMPLATES", TWO_TEMPLATES)
    args, trainer = train_in_process(data_root, clip_path, out, "PromptSRC", "vit_b16_c2_ep20_batch4_4+4ctx", GPA_RUN)
    learner, per_epoch, accuracies = trainer.model.prompt_learner, [], []
    add, after_epoch, test = trainer.aggregation.add, trainer.after_epoch, trainer.test

    def record(epoch):
        per_epoch.append({n: p.detach().clone() for n, p in learner.named_parameters()})
        add(epoch)

    def stop_or_go():
        after_epoch()
        if trainer.epoch == stop_after_epoch:
            raise Killed  # as a killed job, right after the checkpoint of that epoch
    monkeypatch.setattr(trainer.aggregation, "add", record)
    monkeypatch.setattr(trainer, "after_epoch", stop_or_go)
    monkeypatch.setattr(trainer, "test", lambda split=None: accuracies.append(test(split)) or accuracies[-1])
    train.run(trainer, args)
    return per_epoch, accuracies, trainer


@pytest.fixture(scope="module")
def promptsrc_run(data_root, tiny_clip_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("promptsrc")
    with pytest.MonkeyPatch.context() as monkeypatch:
        per_epoch, accuracies, trainer = run_promptsrc(data_root, tiny_clip_path, out, monkeypatch)
    close_logger()
    return out, per_epoch, accuracies, trainer


def test_promptsrc_saves_and_evaluates_the_gaussian_aggregate(promptsrc_run):
    out, per_epoch, accuracies, trainer = promptsrc_run
    assert len(per_epoch) == 3 and not torch.equal(per_epoch[0]["text.ctx"], per_epoch[2]["text.ctx"])
    weights = [0.2740686, 0.4518628, 0.2740686]  # N(e; 2, 1) at e = 1, 2, 3, normalised
    assert gaussian_weights(2, 1, 3) == pytest.approx(weights, abs=1e-7)
    state = torch.load(out / "VLPromptLearner" / "model.pth.tar-3", weights_only=True)
    assert set(state["state_dict"]) == set(per_epoch[0])
    learner = dict(trainer.model.prompt_learner.named_parameters())
    for name, saved in state["state_dict"].items():
        expected = sum(w * snapshot[name] for w, snapshot in zip(weights, per_epoch))
        assert torch.allclose(saved, expected, atol=1e-6), name
        assert torch.equal(learner[name].detach(), saved)  # what was evaluated
    assert len(accuracies) == 1  # the final test, run on the aggregated prompts


def test_promptsrc_resumes_with_its_aggregation_state(data_root, tiny_clip_path, tmp_path, monkeypatch, promptsrc_run):
    with pytest.raises(Killed):
        run_promptsrc(data_root, tiny_clip_path, tmp_path, monkeypatch, stop_after_epoch=1)
    close_logger()
    per_epoch, _, _ = run_promptsrc(data_root, tiny_clip_path, tmp_path, monkeypatch)
    assert len(per_epoch) == 1  # only epoch 3 ran again; epochs 1-2 came from the checkpoint's running sum
    resumed = torch.load(tmp_path / "VLPromptLearner" / "model.pth.tar-3", weights_only=True)["state_dict"]
    straight = torch.load(promptsrc_run[0] / "VLPromptLearner" / "model.pth.tar-3", weights_only=True)["state_dict"]
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name


def test_cliplora_runs_the_released_iteration_schedule(data_root, tiny_clip_path, tmp_path):
    args, trainer = train_in_process(
        data_root, tiny_clip_path, tmp_path, "CLIPLoRA", "vit_b16_r2",
        ["DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", "base", "TRAINER.CLIPLORA.N_ITERS", "3",
         "DATALOADER.TRAIN_X.BATCH_SIZE", "2"])
    assert type(trainer.optim).__name__ == "AdamW" and trainer.max_epoch == 2  # NUM_SHOTS epochs
    lrs = []
    step = trainer.optim.step

    def record(*a, **k):
        lrs.append(trainer.optim.param_groups[0]["lr"])
        return step(*a, **k)
    trainer.optim.step = record
    train.run(trainer, args)
    log = (tmp_path / "log.txt").read_text()
    # 2 epochs of 3 iterations from a 2-batch training set: the data is drawn pass after pass
    assert "epoch [2/2] batch [3/3]" in log and "CLIP-LoRA schedule: 3 iterations x 2 shots = 6" in log
    expected = [1e-6 + (2e-4 - 1e-6) * (1 + torch.cos(torch.tensor(t * torch.pi / 6)).item()) / 2 for t in range(6)]
    assert lrs == pytest.approx(expected, rel=1e-5)  # cosine to 1e-6, stepped after every iteration
    assert trainer.optim.param_groups[0]["lr"] == pytest.approx(1e-6)
    assert (tmp_path / "lora" / "model.pth.tar-2").is_file()
