"""LwEIB: the released modules' parameter count, the adapters against the released block computed
with stock CLIP, the exact fast path, the slow-fast scales and every draw in the released order,
negative sampling, description prompts (one per class in training, averaged at test), config errors,
base-to-new through the scripts and an exact resume."""
import json
import math
import os
import subprocess
import types

import pytest
import torch
import torch.nn.functional as F

import trainers
from dassl.utils import load_trainable_state_dict, trainable_state_dict
from datasets.descriptions import DescriptionsError
from datasets.fake import make_fake_dataset
from method_configs import descriptions_file
from train_runs import (Killed, base2new_through_scripts, restore_streams,  # noqa: F401  (fixture)
                        checkpoint_numel, descriptions_fact, run_in_process, train_argv)
from trainers.clip_prompting import set_fast_paths, tiny_clip, tokenize, vit_b16_shaped_clip
from trainers.lweib import LwEIB, LwEIBCLIP, adapted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE2NEW = "vit_b16_ep25_batch16"
CROSS_DATASET = "vit_b16_ep10_batch128_cross_datasets"
# classes of the synthetic benchmark, whose own descriptions need no file: 4 sentences each
CLASSES = ["red circle", "blue square", "green star", "yellow heart", "purple moon", "orange cross"]


def lweib_cfg(**keys):
    cfg = trainers.build_cfg("LWEIB", **{"ADAPTER_START": 1, "ADAPTER_END": 2, **keys})
    cfg.DATASET.NAME = "SyntheticShapes"
    return cfg


@pytest.fixture(scope="module")
def small_clip():
    return tiny_clip(image_resolution=32, layers=2, patch_size=16)


def build(clip_model, classes=CLASSES, weights=0.0, **keys):
    """An LwEIB model; ``weights`` > 0: adapters drawn N(0, weights) so that they matter at any scale."""
    torch.manual_seed(0)
    model = LwEIBCLIP(lweib_cfg(**keys), classes, clip_model)
    if weights:
        with torch.no_grad():
            for p in model.adapter_learner.parameters():
                p.normal_(std=weights)
    return model


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(3, 3, 32, 32)


def count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# -- what the released code creates ------------------------------------------------------------------
@pytest.fixture(scope="module")
def vit_b16():
    return vit_b16_shaped_clip()


@pytest.mark.parametrize("config", [BASE2NEW, CROSS_DATASET])
def test_trainable_parameters_on_vit_b16_are_the_released_adapters(vit_b16, config):
    cfg = trainers.build_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "trainers", "LwEIB", f"{config}.yaml"))
    cfg.DATASET.NAME = "SyntheticShapes"
    model = LwEIBCLIP(cfg, CLASSES[:3], vit_b16)
    # Released _build_adapter, layers 1-12 of each tower, bias-free depthwise convolutions (channels x kernel):
    # text Conv1d(512, k=3) + Conv1d(2048, k=3) = 1,536 + 6,144 = 7,680 per layer;
    # image Conv2d(768, 3x3) + Conv2d(3072, 3x3) = 6,912 + 27,648 = 34,560 per layer;
    # 12 x (7,680 + 34,560) = 506,880.
    assert count(model) == count(model.adapter_learner) == 506_880
    shapes = {n: tuple(p.shape) for n, p in model.adapter_learner.named_parameters()}
    assert len(shapes) == 48 and shapes["text_adapter.1.att_conv.conv.weight"] == (512, 1, 3)
    assert shapes["text_adapter.12.mlp_conv.conv.weight"] == (2048, 1, 3)
    assert shapes["visual_adapter.1.att_conv.conv.weight"] == (768, 1, 3, 3)
    assert shapes["visual_adapter.12.mlp_conv.conv.weight"] == (3072, 1, 3, 3)
    # a checkpoint holds exactly these tensors, under the released names: no CLIP, no description tokens
    assert set(trainable_state_dict(model.adapter_learner)) == set(shapes)


def test_a_released_checkpoint_loads(small_clip):
    """The released learner also saves its class prompts' tokens (tk_prompts); they are skipped."""
    saved = build(small_clip, weights=0.3).adapter_learner
    state = dict(trainable_state_dict(saved), tk_prompts=torch.zeros(6, 4, 77, dtype=torch.long))
    fresh = build(small_clip).adapter_learner
    load_trainable_state_dict(fresh, state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), saved.parameters()))


# -- the adapters, against the released block on stock CLIP -------------------------------------------
def released_conv(h, weight, grid):
    """The released depthwise convolution on batch-first tokens: along the sequence, or over the grid."""
    if not grid:
        return F.conv1d(h.transpose(1, 2), weight, padding=1, groups=h.shape[-1]).transpose(1, 2)
    n, length, width = h.shape
    side = int(math.sqrt(length))
    y = F.conv2d(h.transpose(1, 2).reshape(n, width, side, side), weight, padding=1, groups=width)
    return y.reshape(n, width, length).transpose(1, 2)


def released_blocks(x, blocks, adapters, scale, skip, grid, mask=None):
    """The released block: x + attn(a(ln_1 x)), then x + c_proj(gelu(a(c_fc(ln_2 x)))), a(h) = h + s conv(h)
    on the tokens after ``skip``; the library's own modules, sequence-first attention."""
    def adapt(h, conv):
        return torch.cat([h[:, :skip], h[:, skip:] + scale * released_conv(h[:, skip:], conv.conv.weight, grid)], 1)
    for i, block in enumerate(blocks):
        a = adapters[i + 1]
        h = block.ln_1(x)
        h = h if a is None else adapt(h, a.att_conv)
        h = h.transpose(0, 1)
        x = x + block.attn(h, h, h, need_weights=False, attn_mask=mask)[0].transpose(0, 1)
        y = block.mlp.c_fc(block.ln_2(x))
        y = y if a is None else adapt(y, a.mlp_conv)
        x = x + block.mlp.c_proj(block.mlp.gelu(y))
    return x


@torch.no_grad()
def test_adapters_act_where_the_released_block_puts_them(small_clip, images):
    model = build(small_clip, weights=0.3, ADAPTER_END=1, ADAPTER_SCALE=0.5).eval()
    learner = model.adapter_learner
    visual = small_clip.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)  # 2 x 2 patches, row-major
    x = torch.cat([visual.class_embedding.expand(len(x), 1, -1), x], 1) + visual.positional_embedding
    x = released_blocks(visual.ln_pre(x), visual.transformer.resblocks, learner.visual_adapter, 0.5, skip=1, grid=True)
    expected = visual.ln_post(x[:, 0]) @ visual.proj
    assert torch.allclose(model.encode_image(images), expected, atol=1e-5)
    assert not torch.allclose(expected, small_clip.encode_image(images), atol=1e-3)  # the adapters matter

    ids = model.description_ids
    x = small_clip.token_embedding(ids) + small_clip.positional_embedding  # the whole 77-token context
    x = released_blocks(x, small_clip.transformer.resblocks, learner.text_adapter, 0.5, skip=0, grid=False,
                        mask=small_clip.build_attention_mask())
    expected = small_clip.ln_final(x)[torch.arange(len(ids)), ids.argmax(-1)] @ small_clip.text_projection
    assert torch.allclose(model.encode_text(torch.arange(len(ids))), expected, atol=1e-5)


@torch.no_grad()
def test_the_fast_path_keeps_the_tokens_the_text_convolutions_read(small_clip, images):
    model = build(small_clip, weights=0.3, ADAPTER_SCALE=0.5).eval()
    fast = model(images)
    set_fast_paths(model, False)
    reference = model(images)
    set_fast_paths(model, True)
    assert (fast - reference).abs().max() < 1e-4
    assert model.adapter_learner.text_reach == 4  # 2 adapted blocks, each convolution looks 1 token ahead
    model.adapter_learner.text_reach = 0  # a cut right after EOT would change the features
    assert (model(images) - reference).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["openclip", "siglip"])
@torch.no_grad()
def test_other_families_run_the_adapters_the_same_on_both_paths(family, images):
    """OpenCLIP's batch-first LayerScale blocks; timm's blocks in a tower without a class token."""
    from backbones.tiny_models import build_open_clip
    model = build(build_open_clip(family), classes=CLASSES[:3], weights=0.3, ADAPTER_SCALE=0.5).eval()
    images = F.interpolate(images, size=224)
    fast = model(images)
    set_fast_paths(model, False)
    assert (fast - model(images)).abs().max() < 1e-4
    for p in model.adapter_learner.parameters():
        p.zero_()
    assert (fast - model(images)).abs().max() > 1e-3


def test_gradients_are_rescaled_as_released():
    """Input gradient as if unscaled; convolution gradient divided by the scale (x + s conv(x) otherwise)."""
    torch.manual_seed(0)
    conv = build_conv(8)
    x = torch.randn(2, 5, 8, requires_grad=True)
    adapted(conv, x, 0.1).pow(2).sum().backward()
    grads = x.grad.clone(), conv.conv.weight.grad.clone()
    x.grad, conv.conv.weight.grad = None, None
    (x + 0.1 * conv(x)).pow(2).sum().backward()
    assert torch.allclose(grads[0], x.grad, atol=1e-6)
    assert torch.allclose(grads[1], conv.conv.weight.grad / 0.1, atol=1e-5)


def build_conv(width):
    from trainers.lweib import DepthwiseConv
    return DepthwiseConv(width, dims=1)


# -- slow-fast scales and the released draws ---------------------------------------------------------
def test_slow_fast_scales_are_drawn_per_block_in_training_only(small_clip):
    learner = build(small_clip, ADAPTER_SCALE=0.1, ADAPTER_SCALE_FACTOR=3.0, SLOW_FAST_RATIO=0.5).adapter_learner
    torch.manual_seed(3)
    draws = torch.rand(400)
    torch.manual_seed(3)
    scales = learner.train().scales(400)
    assert scales == [pytest.approx(0.3) if u > 0.5 else 0.1 for u in draws.tolist()]
    assert 150 < sum(s > 0.1 for s in scales) < 250  # fast with probability 1 - SLOW_FAST_RATIO
    state = torch.get_rng_state()
    assert learner.eval().scales(12) == [0.1] * 12 and torch.equal(torch.get_rng_state(), state)


def test_a_step_samples_negatives_descriptions_and_scales_in_the_released_order(small_clip, images):
    model = build(small_clip, NEG_SAMPLING_RATIO=1).train()
    labels = torch.tensor([4, 1, 4])
    seen = []
    encode_text = model.encode_text
    model.encode_text = lambda rows: seen.append(rows) or encode_text(rows)
    torch.manual_seed(7)
    logits, target, classes = model.training_logits(images, labels)
    after_step = torch.rand(1)
    # the released sequence: negatives, one description per scored class, text scales, image scales
    torch.manual_seed(7)
    others = torch.tensor([0, 2, 3, 5])
    negatives = others[torch.multinomial(torch.ones(4), 2)]  # 1 negative per batch class, 2 batch classes
    picks = torch.randint(0, 4, (1, 4), dtype=torch.long)[0]
    torch.rand(1), torch.rand(1), torch.rand(1), torch.rand(1)  # 2 text blocks, then 2 image blocks
    assert torch.equal(torch.rand(1), after_step)
    assert torch.equal(classes, torch.cat([torch.tensor([1, 4]), negatives]))  # batch classes sorted, then others
    assert torch.equal(target, torch.tensor([1, 0, 1])) and logits.shape == (3, 4)
    assert torch.equal(seen[0], 4 * classes + picks)  # 4 sentences per class, in class order

    stub = types.SimpleNamespace(model=model)
    torch.manual_seed(7)
    loss, full = LwEIB.compute_loss(stub, images, labels)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-5)
    assert full.shape == (3, 6) and torch.isinf(full[:, [c for c in range(6) if c not in classes]]).all()
    assert torch.equal(full.argmax(1), classes[logits.argmax(1)])  # accuracy reads the original labels


def test_every_process_of_a_distributed_run_scores_the_classes_of_the_whole_batch(small_clip, images, monkeypatch):
    """Two processes holding rows 0-1 and 2 of the batch: their weighted losses make the one-process loss."""
    model = build(small_clip, NEG_SAMPLING_RATIO=1).train()
    labels = torch.tensor([4, 1, 4])
    torch.manual_seed(7)
    logits, target, classes = model.training_logits(images, labels)
    one_process = F.cross_entropy(logits, target)
    monkeypatch.setattr("trainers.lweib.gather_in_rank_order", lambda part: [labels[:2], labels[2:]])
    losses = []
    for rank, rows in ((0, slice(0, 2)), (1, slice(2, 3))):
        monkeypatch.setattr("trainers.lweib.get_rank", lambda: rank)
        torch.manual_seed(7)  # every process draws alike (the engine aligns their RNG states)
        loss, full = LwEIB.compute_loss(types.SimpleNamespace(model=model), images[rows], labels[rows])
        assert torch.equal(torch.isfinite(full[0]).nonzero().squeeze(1), classes.sort().values)
        losses.append(loss.item() * len(labels[rows]) / len(labels))
    assert sum(losses) == pytest.approx(one_process.item(), rel=1e-5)


def test_which_classes_a_step_scores(small_clip):
    labels = torch.tensor([2, 0])
    every = build(small_clip, NEG_SAMPLING_RATIO=-1).sample_classes(labels)
    assert every[0] is None and torch.equal(every[1], labels)
    positives = build(small_clip, NEG_SAMPLING_RATIO=0).sample_classes(labels)
    assert torch.equal(positives[0], torch.tensor([0, 2])) and torch.equal(positives[1], torch.tensor([1, 0]))
    capped = build(small_clip, NEG_SAMPLING_RATIO=7).sample_classes(labels)  # only 4 other classes exist
    assert sorted(capped[0].tolist()) == list(range(6)) and capped[0][:2].tolist() == [0, 2]
    small = build(small_clip, classes=CLASSES[:2], NEG_SAMPLING_RATIO=7).sample_classes(torch.tensor([1, 1]))
    assert small[0] is None  # no more classes than images: every class, as released


# -- description prompts --------------------------------------------------------------------------------
def test_prompts_are_class_and_description_and_long_ones_are_cut(small_clip, tmp_path):
    long = "a very long description " + "with many words " * 40
    path = tmp_path / "descriptions.json"
    path.write_text(json.dumps({"dog": ["It barks.", long], "sea_lion": "It swims.", "airliner": ["It flies."]}))
    cfg = lweib_cfg()
    cfg.DATASET.NAME, cfg.DATASET.DESCRIPTIONS = "OxfordPets", str(path)
    model = LwEIBCLIP(cfg, ["dog", "sea_lion", "airliner"], small_clip)
    texts = ["a photo of a dog, It barks.", "a photo of a sea lion, It swims.", "a photo of a airliner, It flies."]
    ids = model.description_ids
    assert torch.equal(ids[[0, 2, 3]], tokenize(texts))
    assert ids[1, -1] == ids.max() and ids[1].argmax() == 76  # cut to 77 tokens, ending with EOT
    assert model.description_class.tolist() == [0, 0, 1, 2] and model.description_count.tolist() == [2, 1, 1]
    assert model.descriptions.source == str(path)
    torch.manual_seed(0)
    rows = torch.stack([model.sample_descriptions(None) for _ in range(200)])  # unequal counts: per class
    assert set(rows[:, 0].tolist()) == {0, 1} and set(rows[:, 1].tolist()) == {2} and set(rows[:, 2].tolist()) == {3}


@torch.no_grad()
def test_test_time_class_features_average_the_descriptions(small_clip, images):
    model = build(small_clip, weights=0.3, ADAPTER_SCALE=0.5).eval()
    each = F.normalize(model.encode_text(torch.arange(len(model.description_ids))), dim=-1)
    expected = F.normalize(each.reshape(len(CLASSES), 4, -1).mean(1), dim=-1)
    assert torch.allclose(model.text_features(), expected, atol=1e-6)
    image = F.normalize(model.encode_image(images), dim=-1)
    assert torch.allclose(model(images), model.logit_scale * image @ expected.t(), atol=1e-4)


# -- config errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("keys, message", [
    ({"ADAPTER_START": 0}, "1 <= START <= END <= 2"),
    ({"ADAPTER_END": 3}, "1 <= START <= END <= 2"),
    ({"ADAPTER_SCALE": 0.0}, "must be positive"),
    ({"SLOW_FAST_RATIO": 1.5}, r"in \[0, 1\]"),
    ({"NEG_SAMPLING_RATIO": 0.5}, "must be a whole number"),
])
def test_bad_config_gives_a_clear_error(small_clip, keys, message):
    with pytest.raises(ValueError, match=f"TRAINER.LWEIB: .*{message}"):
        build(small_clip, **keys)


def test_missing_descriptions_are_named(small_clip):
    cfg = lweib_cfg()
    cfg.DATASET.NAME, cfg.TRAINER.NAME = "DescribableTextures", "LwEIB"
    with pytest.raises(DescriptionsError, match="LwEIB reads class descriptions, and DATASET.DESCRIPTIONS is not set"):
        LwEIBCLIP(cfg, ["banded"], small_clip)


# -- end to end ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eurosat(tmp_path_factory):
    """A fake EuroSAT of 6 classes (3 base) and a descriptions file for them."""
    root = tmp_path_factory.mktemp("data")
    written = make_fake_dataset("eurosat", str(root), num_classes=6, images_per_class=6)
    return str(root), descriptions_file(root, written.classnames)


def test_base2new_through_the_scripts(eurosat, tiny_clip_path, tmp_path):
    root, descriptions = eurosat
    run, log, test_log = base2new_through_scripts("lweib", "eurosat", root, tiny_clip_path, tmp_path,
                                                  ["OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "2",
                                                   "DATASET.DESCRIPTIONS", descriptions])
    assert run.parts[-3:] == ("LwEIB", BASE2NEW, "seed1") and "(6 prompts, 2 to 2 descriptions" in log
    facts = json.loads((run / "run_facts.json").read_text())
    assert facts["descriptions"] == descriptions_fact(descriptions)
    assert checkpoint_numel(run / "adapter_learner" / "model.pth.tar-1") == facts["trainable_params"]
    assert "(epoch = 1)" in test_log


@pytest.mark.parametrize("protocol, args, config", [
    ("base2new_train", ["imagenet", "1"], BASE2NEW),  # as released: one config for every dataset
    ("xd_train", ["1"], CROSS_DATASET),
    ("xd_test", ["imagenet_r", "1"], CROSS_DATASET),
])
def test_scripts_pick_the_released_configs(protocol, args, config):
    done = subprocess.run(["bash", f"scripts/lweib/{protocol}.sh", *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, DRY_RUN="1", OUTPUT="/nonexistent-output"))
    assert done.returncode == 0, done.stderr
    assert f"--config-file configs/trainers/LwEIB/{config}.yaml " in done.stdout


def test_there_is_no_released_few_shot_protocol():
    done = subprocess.run(["bash", "scripts/lweib/few_shot.sh", "dtd", "1"], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, DRY_RUN="1"))
    assert done.returncode == 2 and "names no config for the few_shot protocol" in done.stderr


def run_two_epochs(eurosat, clip_path, out, kill_after_epoch=None):
    """Two epochs on the 3 base classes with batch 2 (every step samples a negative class): the epochs trained."""
    root, descriptions = eurosat
    return run_in_process(train_argv(root, clip_path, out, "LwEIB", BASE2NEW, dataset="eurosat", opts=[
        "OPTIM.MAX_EPOCH", "2", "DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", "base",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "2", "TEST.NO_TEST", "True", "DATASET.DESCRIPTIONS", descriptions,
        "TRAINER.LWEIB.SLOW_FAST_RATIO", "0.5"]), kill_after_epoch)[1]


def test_a_killed_run_resumes_to_the_same_adapters(eurosat, tiny_clip_path, tmp_path):
    assert run_two_epochs(eurosat, tiny_clip_path, tmp_path / "straight") == [0, 1]
    with pytest.raises(Killed):
        run_two_epochs(eurosat, tiny_clip_path, tmp_path / "killed", kill_after_epoch=1)
    assert run_two_epochs(eurosat, tiny_clip_path, tmp_path / "killed") == [1]  # epoch 2 only
    straight, resumed = (torch.load(tmp_path / run / "adapter_learner" / "model.pth.tar-2", weights_only=True)
                         for run in ("straight", "killed"))
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for name, tensor in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], tensor), name
