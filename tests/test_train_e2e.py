"""train.py end to end on a generated Caltech101 with the tiny random CLIP."""
import json

import pytest
import torch

from datasets.fake import make_fake_dataset
from train_runs import error_of, restore_streams, run_log, train_argv  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_fake_dataset("caltech101", str(root), num_classes=6, images_per_class=8)
    return str(root)


def run_train(data_root, clip_path, out, trainer, config, flags=(), opts=()):
    """Run train.py in-process and return its log."""
    return run_log(train_argv(data_root, clip_path, out, trainer, config, flags=flags, opts=opts))


def accuracy(log):
    lines = [l for l in log.splitlines() if l.startswith("* accuracy:")]
    return float(lines[-1].split()[-1].rstrip("%"))


def test_coop_trains_saves_and_eval_only_reproduces(data_root, tiny_clip_path, tmp_path):
    out = tmp_path / "coop"
    log = run_train(data_root, tiny_clip_path, out, "CoOp", "vit_b16_ep50_ctxv1", opts=("OPTIM.MAX_EPOCH", "2"))
    assert "epoch [2/2] batch [1/1]" in log and "Finish training" in log and "* accuracy:" in log
    assert "Setting fixed seed: 1" in log  # H8: the seed is in the log
    ckpt = out / "prompt_learner" / "model.pth.tar-2"
    state = torch.load(ckpt, weights_only=True)
    assert set(state["state_dict"]) == {"ctx"} and state["state_dict"]["ctx"].shape == (4, 64)
    assert state["epoch"] == 2
    results = json.loads((out / "results.json").read_text())

    eval_out = tmp_path / "coop_eval"
    eval_log = run_train(data_root, tiny_clip_path, eval_out, "CoOp", "vit_b16_ep50_ctxv1",
                         flags=("--eval-only", "--model-dir", str(out), "--load-epoch", "2"))
    assert "Finish training" not in eval_log
    assert f'Loading weights to prompt_learner from "{ckpt}" (epoch = 2)' in eval_log
    assert accuracy(eval_log) == pytest.approx(results["metrics"]["accuracy"], abs=0.05)


def test_mudpt_trains_on_base_and_tests_on_new(data_root, tiny_clip_path, tmp_path):
    out = tmp_path / "base"
    config = "vit_b16_bz4_ep10_nctx4_depth12"
    log = run_train(data_root, tiny_clip_path, out, "MuDPT", config,
                    opts=("OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base"))
    assert "SUBSAMPLE BASE CLASSES!" in log and "# classes  3" in log
    assert "# trainable params:" in log and "* accuracy:" in log and "Finish training" in log
    ckpt = torch.load(out / "MultimodalDeepPromptTuning" / "model.pth.tar-1", weights_only=True)
    assert "text_ctx" in ckpt["state_dict"] and "inj_t2v.proj.weight" in ckpt["state_dict"]
    assert not any("token_" in k or "transformer" in k.split(".")[0] for k in ckpt["state_dict"])
    facts = json.loads((out / "run_facts.json").read_text())  # what the run is, as data
    assert facts["trainable_params"] == sum(v.numel() for v in ckpt["state_dict"].values())
    assert f"# trainable params: {facts['trainable_params']:,}" in log
    assert facts["trainable_names"] == sorted(ckpt["state_dict"])
    assert (facts["trainer"], facts["n_ctx"], facts["prompt_text"], facts["seed"]) == ("MuDPT", 4, "a photo of a", 1)

    new_log = run_train(data_root, tiny_clip_path, tmp_path / "new", "MuDPT", config,
                        flags=("--eval-only", "--model-dir", str(out), "--load-epoch", "1"),
                        opts=("DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "new"))
    assert "SUBSAMPLE NEW CLASSES!" in new_log and "* accuracy:" in new_log
    assert json.loads((tmp_path / "new" / "results.json").read_text())["split"] == "test"
    assert json.loads((tmp_path / "new" / "run_facts.json").read_text()) == facts  # eval-only: the same model


def test_cocoop_trains_one_epoch(data_root, tiny_clip_path, tmp_path):
    log = run_train(data_root, tiny_clip_path, tmp_path / "cocoop", "CoCoOp", "vit_b16_c4_ep10_batch1_ctxv1",
                    opts=("OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "2"))
    assert "epoch [1/1] batch [12/12]" in log and "* accuracy:" in log  # 6 classes x 2 shots, batch 1


@pytest.mark.parametrize("trainer", ["ZeroshotCLIP", "ZeroshotCLIP2"])
def test_zero_shot_runs_eval_only_without_a_model(data_root, tiny_clip_path, tmp_path, trainer):
    log = run_train(data_root, tiny_clip_path, tmp_path / "zs", trainer, "vit_b16", flags=("--eval-only",))
    assert "Prompts: ['a photo of a " in log and "* accuracy:" in log
    facts = json.loads((tmp_path / "zs" / "run_facts.json").read_text())
    assert (facts["trainer"], facts["trainable_params"], facts["trainable_names"]) == (trainer, 0, [])
    assert facts["n_ctx"] is None and facts["prompt_text"] is None  # hand-crafted prompts: no learned context


def base_argv(data_root, clip_path, tmp_path, trainer="CoOp", dataset="caltech101"):
    return ["--root", data_root, "--trainer", trainer, "--output-dir", str(tmp_path / "bad"),
            "--dataset-config-file", f"configs/datasets/{dataset}.yaml",
            "--config-file", "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml", "MODEL.BACKBONE.PATH", clip_path]


def test_bad_input_gives_one_clear_message(data_root, tiny_clip_path, tmp_path, capsys):
    err = error_of(capsys, base_argv(data_root, tiny_clip_path, tmp_path, trainer="CoOP"))
    assert "[CoOP]" in err and "do you mean [CoOp]" in err and "trainers/" in err

    argv = base_argv(data_root, tiny_clip_path, tmp_path) + ["DATASET.NAME", "Caltech102"]
    err = error_of(capsys, argv)
    assert "Caltech102" in err and "Caltech101" in err

    err = error_of(capsys, base_argv(data_root, tiny_clip_path, tmp_path) + ["OPTIM.LRR", "0.1"])
    assert "OPTIM.LRR" in err and "OPTIM.LR" in err

    err = error_of(capsys, base_argv(str(tmp_path / "no_data"), tiny_clip_path, tmp_path))
    assert "caltech-101" in err and str(tmp_path / "no_data") in err

    err = error_of(capsys, base_argv(data_root, str(tmp_path / "missing.pt"), tmp_path))
    assert "missing.pt" in err and "MODEL.BACKBONE.PATH" in err

    argv = base_argv(data_root, tiny_clip_path, tmp_path, trainer="MuDPT")
    argv[argv.index("--config-file") + 1] = "configs/trainers/MuDPT/vit_b16_bz4_ep10_nctx4_depth12.yaml"
    err = error_of(capsys, argv + ["TRAINER.MUDPT.DEEP_PROMPT_DEPTH", "13"])
    assert "DEEP_PROMPT_DEPTH is 13" in err

    err = error_of(capsys, base_argv(data_root, tiny_clip_path, tmp_path) + ["--eval-only"])
    assert "model" in err.lower()  # a trained method needs --model-dir for --eval-only
    assert not (tmp_path / "bad" / "run.lock").exists()  # a failed start releases the folder


@pytest.mark.parametrize("trainer, config, name", [
    ("VPT", "vit_b16_c2_ep5_batch4_4", "prompt_learner"),
    ("IVLP", "vit_b16_c2_ep5_batch4_2+2ctx", "VLPromptLearner"),
    ("MaPLe", "vit_b16_c2_ep5_batch4_2ctx", "MultiModalPromptLearner"),
    ("DCP", "vit_b16_c2_ep20_batch4_16ctx", "MultiModalPromptLearner"),
    ("DPT", "vit_b16_deep", "prompt_learner"),
])
def test_peer_methods_train_end_to_end(data_root, tiny_clip_path, tmp_path, trainer, config, name):
    out = tmp_path / trainer
    log = run_train(data_root, tiny_clip_path, out, trainer, config,
                    opts=("OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "base"))
    assert "Finish training" in log and "* accuracy:" in log
    assert (out / name / "model.pth.tar-1").is_file()


def test_mudpt_mixed_precision_trains_with_finite_loss(data_root, tiny_clip_path, tmp_path):
    out = tmp_path / "amp"
    log = run_train(data_root, tiny_clip_path, out, "MuDPT", "vit_b16_bz4_ep10_nctx4_depth12",
                    opts=("OPTIM.MAX_EPOCH", "1", "TRAINER.MUDPT.PREC", "amp"))
    losses = [float(line.split(" loss ")[1].split()[0]) for line in log.splitlines() if line.startswith("epoch [")]
    assert losses and all(loss == loss and loss < 1e4 for loss in losses)  # no NaN, no blow-up
    state = torch.load(out / "MultimodalDeepPromptTuning" / "model.pth.tar-1", weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float32 for v in state.values())  # parameters stay fp32 under autocast
