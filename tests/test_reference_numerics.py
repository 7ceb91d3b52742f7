"""MODEL.REFERENCE_NUMERICS: our own trainers reproduce the released code's numerics step by step.

The expected figures were taken from the released code bases (Dassl.pytorch + CoOp for CoOp and
CoCoOp; multimodal-prompt-learning for MaPLe), run side by side on CPU with the same tiny CLIP
weights, the same generated EuroSAT copy, seed and overrides: the six per-iteration loss values
their log printed, and the sum, absolute sum and first values of the learned context they saved
after two epochs. The released MaPLe runs only with PREC fp16 (it keeps its shallow projection
in fp16, so PREC fp32 fails there with a dtype error).
"""
import os

import pytest
import torch

from backbones.openai import build_clip
from datasets.fake import make_fake_dataset
from train_runs import restore_streams, run_log, train_argv  # noqa: F401  (fixture)

OPTS = ["DATASET.NUM_SHOTS", "4", "OPTIM.MAX_EPOCH", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
        "DATALOADER.TEST.BATCH_SIZE", "8", "TRAIN.PRINT_FREQ", "1", "INPUT.SIZE", "(32, 32)",
        "MODEL.REFERENCE_NUMERICS", "True"]
# (trainer, config, PREC, CLIP shape, extra overrides, checkpoint folder and context key,
#  released loss lines, released context: sum, absolute sum, first three values)
RELEASED = {
    "CoOp-fp32": ("CoOp", "vit_b16_ep50_ctxv1", "fp32", "w64", [], ("prompt_learner", "ctx"),
                  ["1.2179", "1.5523", "1.4030", "1.4277", "1.2509", "1.6491"],
                  (-0.10212165117263794, 4.5008745193481445,
                   [0.022283462807536125, -0.026582540944218636, -0.0017447674181312323])),
    "CoOp-fp16": ("CoOp", "vit_b16_ep50_ctxv1", "fp16", "w64", [], ("prompt_learner", "ctx"),
                  ["1.2168", "1.5518", "1.4033", "1.4277", "1.2510", "1.6484"],
                  (-0.1022038459777832, 4.5016865730285645,
                   [0.02227783203125, -0.026519775390625, -0.001728057861328125])),
    "CoCoOp-fp32": ("CoCoOp", "vit_b16_c4_ep10_batch1_ctxv1", "fp32", "w64", [], ("prompt_learner", "ctx"),
                    ["1.3763", "1.2986", "1.4512", "1.3872", "1.8230", "0.9766"],
                    (-0.10212159156799316, 3.9697299003601074,
                     [0.0168769471347332, -0.03373013064265251, 0.010077017359435558])),
    "CoCoOp-fp16": ("CoCoOp", "vit_b16_c4_ep10_batch1_ctxv1", "fp16", "w64", [], ("prompt_learner", "ctx"),
                    ["1.3770", "1.2988", "1.4512", "1.3867", "1.8223", "0.9766"],
                    (-0.10216957330703735, 3.970001459121704,
                     [0.016876220703125, -0.03369140625, 0.01007843017578125])),
    "MaPLe-fp16": ("MaPLe", "vit_b16_c2_ep5_batch4_2ctx", "fp16", "w768", ["TRAINER.MAPLE.PROMPT_DEPTH", "2"],
                   ("MultiModalPromptLearner", "ctx"),
                   ["1.3779", "1.1523", "1.4043", "1.2412", "1.2383", "1.3242"],
                   (0.030441641807556152, 16.337675094604492,
                    [0.017730712890625, -0.038177490234375, 0.041595458984375])),
    # the released MuDPT draws its visual prompts inside its CLIP's constructor: replayed in this mode
    "MuDPT-fp32": ("MuDPT", "vit_b16_released_linear_nctx2_depth8", "fp32", "b16",
                   ["TRAINER.MUDPT.DEEP_PROMPT_DEPTH", "2", "TRAINER.MUDPT.N_CTX", "2"],
                   ("MultimodalDeepPromptTuning", "text_ctx"),
                   ["1.2556", "1.5395", "1.3722", "1.3957", "1.3210", "1.4046"],
                   (-0.32016175985336304, 16.64146614074707,
                    [0.013183372095227242, 0.03445706143975258, -0.00016331324877683073])),
}
# The CLIPs the released runs loaded: OpenAI's architecture at 32 px with 2 blocks per tower, drawn
# from seed 0 (the released MaPLe hard-codes text width 512 and visual width 768, the released MuDPT also an
# embedding width of 512).
SHAPES = {"w64": dict(embed_dim=64, vision_width=64, text_width=64),
          "w768": dict(embed_dim=64, vision_width=768, text_width=512),
          "b16": dict(embed_dim=512, vision_width=768, text_width=512)}  # the released MuDPT: ViT-B/16's widths


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_fake_dataset("eurosat", str(root), num_classes=4, images_per_class=6)
    return str(root)


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    paths = {}
    for name, s in SHAPES.items():
        torch.manual_seed(0)
        model = build_clip(s["embed_dim"], 32, 2, s["vision_width"], 16, transformer_width=s["text_width"],
                           transformer_layers=2)
        paths[name] = str(folder / f"{name}.pt")
        torch.save(model.state_dict(), paths[name])
    return paths


def losses_of(log):
    return [line.split(" loss ")[1].split()[0] for line in log.splitlines() if line.startswith("epoch [")]


@pytest.mark.parametrize("case", list(RELEASED))
def test_our_trainers_reproduce_the_released_loss_lines_and_context(data_root, clip_files, tmp_path, case):
    trainer, config, prec, shape, extra, folder, losses, (total, absolute, first) = RELEASED[case]
    opts = OPTS + [f"TRAINER.{trainer.upper()}.PREC", prec, *extra]
    log = run_log(train_argv(data_root, clip_files[shape], tmp_path, trainer, config, dataset="eurosat", opts=opts))
    assert "Numerics: reference" in log and f"Precision: {prec}" in log
    assert losses_of(log) == losses
    folder, key = folder
    ctx = torch.load(os.path.join(tmp_path, folder, "model.pth.tar-2"), weights_only=True)["state_dict"][key]
    assert ctx.dtype == (torch.float16 if prec == "fp16" else torch.float32)  # as the released context
    ctx = ctx.float()
    assert abs(ctx.sum().item() - total) < 1e-6 and abs(ctx.abs().sum().item() - absolute) < 1e-6
    assert torch.allclose(ctx.flatten()[:3], torch.tensor(first), rtol=0, atol=1e-6)


def test_by_default_the_numerics_are_ours(data_root, clip_files, tmp_path):
    """Exact fp32 weights and the fast paths: the same first loss to three decimals, not to the last digit."""
    opts = [o for o in OPTS if o not in ("MODEL.REFERENCE_NUMERICS", "True")] + ["TRAINER.COOP.PREC", "fp32"]
    log = run_log(train_argv(data_root, clip_files["w64"], tmp_path, "CoOp", "vit_b16_ep50_ctxv1", dataset="eurosat",
                             opts=opts))
    ours = losses_of(log)
    assert "Numerics: reference" not in log
    assert ours != RELEASED["CoOp-fp32"][6] and abs(float(ours[0]) - 1.2179) < 1e-3


def test_reference_numerics_refuse_a_backbone_the_released_code_never_loaded():
    from backbones.interface import Backbone
    backbone = Backbone.__new__(Backbone)
    backbone.family = "siglip"
    with pytest.raises(ValueError, match="MODEL.REFERENCE_NUMERICS reproduces the released code bases, which load "
                                         "OpenAI's CLIP .* of the siglip family"):
        backbone.round_to_half()
