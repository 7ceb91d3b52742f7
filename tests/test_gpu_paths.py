"""The GPU code paths, executed on the CPU where torch allows it.

- GPU_PRECISION_ON_CPU=1 runs the precision branches a GPU takes (fp16 CLIP with a gradient
  scaler; amp as fp16 autocast with a scaler) on the CPU;
- every trainer's model is moved to the "meta" device and runs a training step there: a tensor
  created on the CPU inside a forward (a missing ``device=``) fails as it would on CUDA.
"""
import math

import pytest
import torch

import train
from dassl.engine import TRAINER_REGISTRY
from dassl.utils.logger import close_logger
from datasets.fake import make_fake_dataset
from method_configs import base2new_config, descriptions_file, project_trainers, script_folders


TRAINED = [name for name in project_trainers() if not name.startswith("ZeroshotCLIP")]


@pytest.mark.parametrize("trainer", TRAINED)
def test_no_tensor_is_left_behind_when_the_model_moves(trainer, tiny_clip_path, tmp_path):
    from trainers import build_cfg
    from trainers.clip_prompting import set_fast_paths
    cfg = build_cfg()
    assert trainer in script_folders(), f"no scripts/<method>/method.sh runs {trainer}"
    cfg.merge_from_file(base2new_config(script_folders()[trainer]))
    cfg.merge_from_list(["TRAINER.NAME", trainer, "MODEL.BACKBONE.PATH", tiny_clip_path, "USE_CUDA", "False",
                         "DATASET.DESCRIPTIONS", descriptions_file(tmp_path, ["cat", "dog", "red car"])])
    model = TRAINER_REGISTRY.get(trainer)(cfg, classnames=["cat", "dog", "red car"]).model
    set_fast_paths(model, False)  # the EOT cut reads a tensor value, which "meta" cannot give
    model.to("meta").eval()  # eval: the reference path has no LoRA dropout
    logits = model(torch.empty(2, 3, 224, 224, device="meta"))
    assert logits.device.type == "meta" and logits.shape == (2, 3)
    logits.float().logsumexp(-1).sum().backward()
    assert any(p.grad is not None and p.grad.device.type == "meta" for p in model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_fake_dataset("caltech101", str(root), num_classes=4, images_per_class=6)
    return str(root)


@pytest.mark.parametrize("trainer, config, name, prec", [
    ("CoOp", "vit_b16_ep50_ctxv1", "prompt_learner", "fp16"),
    ("CoCoOp", "vit_b16_c4_ep10_batch1_ctxv1", "prompt_learner", "fp16"),
    ("MuDPT", "vit_b16_bz4_ep10_nctx4_depth12", "MultimodalDeepPromptTuning", "amp"),
])
def test_gpu_precision_branches_train_on_cpu(trainer, config, name, prec, data_root, tiny_clip_path,
                                             tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_PRECISION_ON_CPU", "1")
    out = tmp_path / trainer
    node = trainer.upper()
    try:
        train.main(["--root", data_root, "--seed", "1", "--trainer", trainer,
                    "--dataset-config-file", "configs/datasets/caltech101.yaml",
                    "--config-file", f"configs/trainers/{trainer}/{config}.yaml", "--output-dir", str(out),
                    "MODEL.BACKBONE.PATH", tiny_clip_path, "DATALOADER.NUM_WORKERS", "0",
                    "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "2", f"TRAINER.{node}.PREC", prec])
    finally:
        close_logger()
    log = (out / "log.txt").read_text()
    assert f"Precision: {prec}" in log
    losses = [float(line.split(" loss ")[1].split()[0]) for line in log.splitlines() if line.startswith("epoch [")]
    assert losses and all(math.isfinite(loss) for loss in losses)
    checkpoint = torch.load(out / name / "model.pth.tar-1", weights_only=True)
    assert checkpoint["scaler"] is not None and checkpoint["scaler"]["scale"] > 0  # the scaler stepped
    assert all(v.dtype == torch.float32 for v in checkpoint["state_dict"].values())  # learnable stay fp32
