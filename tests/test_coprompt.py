"""CoPrompt: the released trainable-parameter counts, the adapters on both encoders' features, the
consistency loss against the frozen CLIP (one description per class per step, a second augmented
view), config errors, the released per-dataset configs, base-to-new through the scripts and an
exact resume."""
import json
import os
import subprocess

import pytest
import torch
import torch.nn.functional as F

import trainers
from dassl.config import get_cfg_default
from dassl.utils import trainable_state_dict
from datasets.descriptions import DescriptionsError
from datasets.fake import make_fake_dataset
from results.provenance import read_method_settings
from train_runs import (Killed, base2new_through_scripts, restore_streams,  # noqa: F401  (fixture)
                        descriptions_fact, run_in_process, train_argv)
from trainers.clip_prompting import tiny_clip, tokenize, vit_b16_shaped_clip
from trainers.coprompt import CoPrompt, CoPromptCLIP
from trainers.maple import MaPLeCLIP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSNAMES = ["dog", "sea_lion", "airliner"]


def describe(classnames, per_class=3):
    """{class name: sentences}: ``per_class`` sentences per class (a list: one count per class)."""
    counts = per_class if isinstance(per_class, list) else [per_class] * len(classnames)
    words = ["seen up close", "in the open", "at dusk", "from far away", "in a drawing"]
    return {c: [f"a {c.replace('_', ' ')} {w}." for w in words[:n]] for c, n in zip(classnames, counts)}


def write_descriptions(folder, table):
    path = os.path.join(str(folder), "descriptions.json")
    with open(path, "w") as f:
        json.dump(table, f)
    return path


def coprompt_cfg(descriptions="", **keys):
    cfg = trainers.build_cfg("COPROMPT", **keys)
    cfg.TRAINER.NAME = "CoPrompt"
    cfg.DATASET.DESCRIPTIONS = descriptions
    return cfg


def trainer_for(model, cfg):
    """A CoPrompt trainer around an already built model, enough to call its training methods."""
    trainer = object.__new__(CoPrompt)
    trainer.model, trainer.cfg, trainer.device = model, cfg, torch.device("cpu")
    trainer._given_classnames = None  # a training run (predict.py gives class names)
    return trainer


@pytest.fixture(scope="module")
def small_clip():
    """OpenAI's architecture at 32 px, 2 blocks per tower: the same code paths, quickly."""
    return tiny_clip(image_resolution=32, layers=2, patch_size=16)


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)


# -- the released modules' parameters ----------------------------------------------------------------
# The released MultiModalPromptLearner (MaPLe's) with n context tokens and depth D on ViT-B/16:
# ctx n x 512, proj Linear(512, 768) = 393,216 + 768 = 393,984, compound_prompts_text (D-1) x n x 512,
# compound_prompt_projections (D-1) x Linear(512, 768) = (D-1) x 393,984. The released Adapter(512, 4),
# once for the image and once for the text: Linear(512, 128, bias=False) + Linear(128, 512, bias=False)
# = 2 x 65,536 = 131,072 each, 262,144 for both.
# n=2, D=9 (the released config):   1,024 + 393,984 + 8,192 + 3,151,872 + 262,144 = 3,817,216
# n=4, D=12 (e.g. ImageNet, UCF101): 2,048 + 393,984 + 22,528 + 4,333,824 + 262,144 = 5,014,528
@pytest.fixture(scope="module")
def vit_b16():
    return vit_b16_shaped_clip()


@pytest.mark.parametrize("keys, expected", [({}, 3_817_216), ({"N_CTX": 4, "PROMPT_DEPTH": 12}, 5_014_528)])
def test_trainable_parameter_counts_on_vit_b16(vit_b16, keys, expected):
    model = CoPromptCLIP(coprompt_cfg(**keys), CLASSNAMES, vit_b16, with_descriptions=False)
    learner = model.prompt_learner
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == expected
    assert all(n.startswith("prompt_learner.") for n in trainable)  # nothing of the frozen CLIP
    state = trainable_state_dict(learner)  # what a checkpoint holds: no frozen CLIP, no description features
    assert sum(v.numel() for v in state.values()) == expected
    shapes = {n: tuple(v.shape) for n, v in state.items() if n.startswith("adapter")}
    assert shapes == {"adapter_image.fc.0.weight": (128, 512), "adapter_image.fc.2.weight": (512, 128),
                      "adapter_text.fc.0.weight": (128, 512), "adapter_text.fc.2.weight": (512, 128)}


# -- the adapters -------------------------------------------------------------------------------------
def adapted(adapter, x, ratio):
    """The released adapter written out: ratio * ReLU(ReLU(x W1^T) W2^T) + (1 - ratio) * x."""
    w1, w2 = adapter.fc[0].weight, adapter.fc[2].weight
    return ratio * torch.relu(torch.relu(x @ w1.t()) @ w2.t()) + (1 - ratio) * x


def test_adapters_mix_into_maples_features_in_training_and_evaluation(small_clip, images):
    torch.manual_seed(0)
    maple = MaPLeCLIP(trainers.build_cfg("MAPLE", PROMPT_DEPTH=2), CLASSNAMES, small_clip)
    torch.manual_seed(0)
    model = CoPromptCLIP(coprompt_cfg(PROMPT_DEPTH=2), CLASSNAMES, small_clip, with_descriptions=False)
    learner = model.prompt_learner
    for name, p in maple.prompt_learner.named_parameters():  # MaPLe's prompts, initialised as MaPLe's
        assert torch.equal(p, dict(learner.named_parameters())[name]), name
    image = images[0]
    with torch.no_grad():
        for name in ("compound_prompts_text", "ctx"):  # trained prompts, not their initial values
            torch.nn.init.normal_(dict(learner.named_parameters())[name], std=0.5)
            dict(maple.prompt_learner.named_parameters())[name].copy_(dict(learner.named_parameters())[name])
        prompts = maple.prompts()
        text = adapted(learner.adapter_text, maple.encode_text(prompts), 0.2)
        vision = adapted(learner.adapter_image, maple.encode_image(image, prompts), 0.1)
        assert not torch.allclose(text, maple.encode_text(prompts), atol=1e-3)  # the adapter changes them
        assert torch.allclose(model.encode_text(model.prompts()), text, atol=1e-5)
        assert torch.allclose(model.encode_image(image, model.prompts()), vision, atol=1e-5)
        expected = model.logit_scale * F.normalize(vision, dim=-1) @ F.normalize(text, dim=-1).t()
        model.eval()
        assert torch.allclose(model(image), expected, atol=1e-4)
        assert torch.allclose(model(image, text_state=model.text_state()), expected, atol=1e-4)


# -- the loss -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("distill", ["cosine", "mse"])
def test_loss_is_cross_entropy_plus_consistency_with_the_frozen_clip(small_clip, images, tmp_path, distill):
    table = describe(CLASSNAMES)
    cfg = coprompt_cfg(write_descriptions(tmp_path, table), PROMPT_DEPTH=2, W=2.5, DISTILL=distill)
    torch.manual_seed(0)
    model = CoPromptCLIP(cfg, CLASSNAMES, small_clip)
    image, view = images
    labels = torch.tensor([2, 0])
    torch.manual_seed(7)
    loss, logits = trainer_for(model, cfg).compute_loss((image, view), labels)
    torch.manual_seed(7)
    k = int(torch.randint(3, ()))  # one description index for every class, from torch's global RNG
    with torch.no_grad():
        t = F.normalize(model.encode_text(model.prompts()), dim=-1)
        f = F.normalize(model.encode_image(image, model.prompts()), dim=-1)
        # stock CLIP, with its own encode_* methods: the description and the second view
        d = F.normalize(small_clip.encode_text(tokenize([table[c][k] for c in CLASSNAMES])), dim=-1)
        f0 = F.normalize(small_clip.encode_image(view), dim=-1)
    if distill == "cosine":
        consistency = (1 - (t * d).sum(-1).mean()) + (1 - (f * f0).sum(-1).mean())
    else:
        consistency = F.mse_loss(t, d) + F.mse_loss(f, f0)
    expected_logits = model.logit_scale * f @ t.t()
    assert consistency > 1e-3
    assert torch.allclose(logits, expected_logits, atol=1e-4)
    assert torch.allclose(loss, F.cross_entropy(expected_logits, labels) + 2.5 * consistency, atol=1e-4)
    loss.backward()  # the consistency terms reach the prompts and both adapters
    for name, p in model.prompt_learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_descriptions_are_picked_each_step_from_torchs_global_rng(small_clip, tmp_path):
    counts = [3, 5, 2]
    path = write_descriptions(tmp_path, describe(CLASSNAMES, counts))
    model = CoPromptCLIP(coprompt_cfg(path, PROMPT_DEPTH=1, DESCRIPTION_PICK="per_class"), CLASSNAMES, small_clip)
    picked = [set(), set(), set()]
    for seed in range(40):
        torch.manual_seed(seed)
        u = torch.rand(3, dtype=torch.float64)
        torch.manual_seed(seed)
        rows = model.description_rows().tolist()
        assert rows == [o + int(x * n) for o, x, n in zip([0, 3, 8], u, counts)]
        for c, row in enumerate(rows):
            picked[c].add(row)
    assert picked == [{0, 1, 2}, {3, 4, 5, 6, 7}, {8, 9}]  # every description of every class, independently
    with pytest.raises(ValueError, match=r'shared .* has 2 to 5 per class \("airliner": 2\).*DESCRIPTION_PICK '
                                         "per_class"):
        CoPromptCLIP(coprompt_cfg(path, PROMPT_DEPTH=1), CLASSNAMES, small_clip)
    shared = CoPromptCLIP(coprompt_cfg(write_descriptions(tmp_path, describe(CLASSNAMES, 4)), PROMPT_DEPTH=1),
                          CLASSNAMES, small_clip)
    picked = set()
    for seed in range(12):
        torch.manual_seed(seed)
        rows = shared.description_rows().tolist()
        k = rows[0]
        assert rows == [k, 4 + k, 8 + k]  # the same description index for every class
        picked.add(k)
    assert picked == {0, 1, 2, 3}
    assert shared.described is None  # encoded on first use only: evaluation never needs them
    first = shared.described_class_features()
    assert shared.described.shape == (12, small_clip.text_projection.shape[1]) and first.shape[0] == 3


# -- errors and configs -----------------------------------------------------------------------------
@pytest.mark.parametrize("keys, message", [
    ({"W": -1.0}, "TRAINER.COPROMPT: W is -1.0"),
    ({"DISTILL": "l2"}, 'TRAINER.COPROMPT: DISTILL is "l2"; use cosine'),
    ({"TEXT_ADAPTER_RATIO": 1.5}, "TRAINER.COPROMPT: TEXT_ADAPTER_RATIO is 1.5"),
    ({"ADAPTER_REDUCTION": 0}, "TRAINER.COPROMPT: ADAPTER_REDUCTION is 0"),
    ({"DESCRIPTION_PICK": "random"}, 'TRAINER.COPROMPT: DESCRIPTION_PICK is "random"'),
    ({"PROMPT_DEPTH": 3}, "TRAINER.COPROMPT: PROMPT_DEPTH is 3, but this CLIP has 2 layers"),
    ({"N_CTX": 0, "PROMPT_DEPTH": 1}, "TRAINER.COPROMPT: N_CTX is 0"),
])
def test_config_errors_are_named(small_clip, keys, message):
    with pytest.raises(ValueError, match=message):
        CoPromptCLIP(coprompt_cfg(**keys), CLASSNAMES, small_clip, with_descriptions=False)


def test_missing_descriptions_two_views_and_inference_models_are_named(small_clip, tmp_path):
    with pytest.raises(DescriptionsError, match="CoPrompt reads class descriptions, and DATASET.DESCRIPTIONS"):
        CoPromptCLIP(coprompt_cfg(PROMPT_DEPTH=1), CLASSNAMES, small_clip)
    with pytest.raises(DescriptionsError, match='1 of 3 classes have no description .*"airliner"'):
        CoPromptCLIP(coprompt_cfg(write_descriptions(tmp_path, describe(CLASSNAMES[:2])), PROMPT_DEPTH=1),
                     CLASSNAMES, small_clip)
    cfg = coprompt_cfg(PROMPT_DEPTH=1)
    cfg.DATALOADER.K_TRANSFORMS = 1
    with pytest.raises(ValueError, match="needs DATALOADER.K_TRANSFORMS 2 \\(got 1\\)"):
        trainer_for(None, cfg).check_cfg(cfg)
    with pytest.raises(ValueError, match="two augmented views of each image"):
        trainer_for(None, cfg).parse_batch_train({"img": torch.zeros(2, 3, 32, 32), "label": torch.zeros(2)})
    inference = CoPromptCLIP(cfg, CLASSNAMES, small_clip, with_descriptions=False)
    with torch.no_grad():
        assert inference(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(RuntimeError, match="built without class descriptions"):
        inference.described_class_features()


RELEASED = {  # dataset: (N_CTX, PROMPT_DEPTH, W, epochs), the released trainers/constants.py
    "imagenet": (4, 12, 8.0, 8), "caltech101": (4, 12, 4.0, 8), "oxford_pets": (2, 12, 0.1, 8),
    "stanford_cars": (4, 12, 4.0, 8), "oxford_flowers": (4, 9, 8.0, 8), "food101": (4, 9, 0.5, 5),
    "fgvc_aircraft": (4, 9, 2.0, 8), "sun397": (4, 12, 8.0, 8), "dtd": (2, 12, 8.0, 8), "eurosat": (2, 12, 0.1, 8),
    "ucf101": (4, 12, 2.0, 8), "synthetic_shapes": (2, 9, 1.0, 8),  # others: the released coprompt.yaml
}


def test_the_scripts_run_the_released_setting_of_each_dataset():
    env = dict(os.environ, DRY_RUN="1", OUTPUT="/nonexistent-output")
    for dataset, (n_ctx, depth, w, epochs) in RELEASED.items():
        done = subprocess.run(["bash", "scripts/coprompt/base2new_test.sh", dataset, "1"], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        words = done.stdout.split()
        assert f"--load-epoch {epochs} " in done.stdout
        cfg = get_cfg_default()
        trainers.extend_cfg(cfg)
        cfg.merge_from_file(os.path.join(ROOT, words[words.index("--config-file") + 1]))
        c = cfg.TRAINER.COPROMPT
        assert (c.N_CTX, c.PROMPT_DEPTH, c.W, cfg.OPTIM.MAX_EPOCH) == (n_ctx, depth, w, epochs), dataset
        assert (cfg.OPTIM.LR, cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.DATALOADER.K_TRANSFORMS, c.DISTILL) == (
            0.0035, 4, 2, "cosine")
        assert list(cfg.INPUT.TRANSFORMS) == ["randaugment", "normalize"]
    few_shot = subprocess.run(["bash", "scripts/coprompt/few_shot.sh", "dtd", "1"], cwd=ROOT, env=env,
                              capture_output=True, text=True)
    assert few_shot.returncode == 2 and "names no config for the few_shot protocol" in few_shot.stderr


# -- end to end ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Fake EuroSAT (4 classes) and a descriptions file for all of its classes."""
    root = tmp_path_factory.mktemp("data")
    fake = make_fake_dataset("eurosat", str(root), num_classes=4, images_per_class=6)
    return str(root), write_descriptions(root, describe(fake.classnames))


def test_base2new_through_the_scripts(data_root, tiny_clip_path, tmp_path):
    root, descriptions = data_root
    run, log, test_log = base2new_through_scripts("coprompt", "eurosat", root, tiny_clip_path, tmp_path,
                                                  ["OPTIM.MAX_EPOCH", "1", "DATASET.DESCRIPTIONS", descriptions])
    assert run.parts[-3:] == ("CoPrompt", "vit_b16_batch4_eurosat", "seed1")  # the dataset's released setting
    assert "Class descriptions: 6 sentences for 2 classes" in log and "one per class per step (shared)" in log
    state = torch.load(run / "MultiModalPromptLearner" / "model.pth.tar-1", weights_only=True)["state_dict"]
    # the eurosat config: 2 context tokens, depth 12, on the tiny CLIP (width 64, features 64, adapters 64 -> 16)
    expected = 2 * 64 + (64 * 64 + 64) + 11 * 2 * 64 + 11 * (64 * 64 + 64) + 2 * 2 * 64 * 16
    assert sum(v.numel() for v in state.values()) == expected
    assert f"# trainable params: {expected:,}" in log
    settings, params = read_method_settings(str(run / "log.txt"), "CoPrompt")  # what the provenance rows show
    assert (settings["PROMPT_DEPTH"], settings["W"], params) == ("12", "0.1", f"{expected:,}")
    facts = json.loads((run / "run_facts.json").read_text())
    assert facts["descriptions"] == descriptions_fact(descriptions)
    assert "(epoch = 1)" in test_log


RESUME_RUN = ["OPTIM.MAX_EPOCH", "2", "DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", "base",
              "DATALOADER.TRAIN_X.BATCH_SIZE", "2", "TRAINER.COPROMPT.PROMPT_DEPTH", "3"]


def run_coprompt(data_root, clip_path, out, kill_after_epoch=None):
    """A 2-epoch run on the fake EuroSAT (two RandAugment views, a description drawn per step): the epochs
    it trained."""
    root, descriptions = data_root
    return run_in_process(train_argv(root, clip_path, out, "CoPrompt", "vit_b16_batch4", dataset="eurosat",
                                     opts=RESUME_RUN + ["DATASET.DESCRIPTIONS", descriptions]), kill_after_epoch)[1]


def test_a_killed_run_resumes_to_the_same_prompts_and_adapters(data_root, tiny_clip_path, tmp_path):
    assert run_coprompt(data_root, tiny_clip_path, tmp_path / "straight") == [0, 1]
    with pytest.raises(Killed):
        run_coprompt(data_root, tiny_clip_path, tmp_path / "resumed", kill_after_epoch=1)
    assert run_coprompt(data_root, tiny_clip_path, tmp_path / "resumed") == [1]  # epoch 2 only
    straight, resumed = (torch.load(tmp_path / run / "MultiModalPromptLearner" / "model.pth.tar-2",
                                    weights_only=True)["state_dict"] for run in ("straight", "resumed"))
    assert set(straight) == set(resumed)
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name
