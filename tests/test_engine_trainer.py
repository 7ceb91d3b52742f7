"""End-to-end engine tests with a trainer written only against the Dassl API (engine_toy)."""
import logging
import math
import os
import os.path as osp
import re
import sys

import pytest
import torch

from dassl.engine import build_trainer
from dassl.utils import close_logger, read_json, setup_logger
from engine_toy import EPOCH_LINE, Interrupted, ToyTrainer, make_cfg, make_toy_data, run


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_toy_data(tmp_path_factory.mktemp("data"))


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


def test_scalars_go_to_tensorboard_and_metrics_csv(trained):
    """Loss, accuracy and LR per iteration and the test metrics: in the event file and in metrics.csv."""
    import csv
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(osp.join(trained["out"], "tensorboard"))
    events.Reload()
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [step for step, _ in loss] == list(range(6))  # 2 epochs x 3 batches
    with open(osp.join(trained["out"], "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    csv_loss = [(int(r["step"]), float(r["value"])) for r in rows if r["tag"] == "train/loss"]
    assert [s for s, _ in csv_loss] == [s for s, _ in loss]
    assert [v for _, v in csv_loss] == pytest.approx([v for _, v in loss], rel=1e-5)
    # the value logged at the last step is the epoch's running average printed in its last line
    last_line = [line for line in trained["log"].splitlines() if line.startswith("epoch [2/2] batch [3/3]")][0]
    printed_avg = float(last_line.split(" loss ")[1].split()[1].strip("()"))
    assert loss[-1][1] == pytest.approx(printed_avg, abs=5e-5)
    accuracy = read_json(osp.join(trained["out"], "results.json"))["metrics"]["accuracy"]
    assert [float(r["value"]) for r in rows if r["tag"] == "test/accuracy"] == pytest.approx([accuracy])
    assert [e.value for e in events.Scalars("test/accuracy")] == pytest.approx([accuracy])
    assert {r["tag"] for r in rows} >= {"train/loss", "train/acc", "train/lr", "test/accuracy"}


def test_long_evaluations_report_progress_about_every_tenth(capsys):
    from dassl.engine.trainer import EvaluationProgress
    progress = EvaluationProgress(25)
    for batch_idx in range(25):
        progress.update(batch_idx)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("]")[0] for line in lines] == [f"evaluated batch [{i}/25" for i in range(3, 25, 3)]
    short = EvaluationProgress(12)  # a short evaluation prints nothing but its result
    for batch_idx in range(12):
        short.update(batch_idx)
    assert capsys.readouterr().out == ""
