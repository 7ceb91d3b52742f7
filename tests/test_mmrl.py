"""MMRL and MMRL++: parameter counts of the released modules, the released forward on CLIP's own blocks,
the loss, which logits a test uses, the released per-dataset values, config errors, and runs through
the scripts with an exact resume."""
import os
import types

import pytest
import torch
import torch.nn.functional as F

import trainers
from dassl.utils import trainable_state_dict
from datasets.fake import make_fake_dataset
from train_runs import (Killed, base2new_through_scripts, restore_streams,  # noqa: F401  (fixture)
                        run_in_process, train_argv)
from trainers.clip_prompting import set_fast_paths, tiny_clip, tokenize, vit_b16_shaped_clip
from trainers.mmrl import MMRL, MMRLCLIP, effective_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSNAMES = ["dog", "sea_lion", "airliner"]


def count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def vit_b16():
    return vit_b16_shaped_clip()


@pytest.fixture(scope="module")
def small_clip():
    """OpenAI's architecture at 32 px with 3 blocks: tokens inserted before block 1, written over before block 2."""
    return tiny_clip(image_resolution=32, layers=3, patch_size=16)


def build(clip_model, classnames=CLASSNAMES, dataset="", **keys):
    cfg = trainers.build_cfg("MMRL", **dict({"REP_LAYERS": [2, 3]}, **keys))
    cfg.DATASET.NAME = dataset
    torch.manual_seed(0)
    model = MMRLCLIP(cfg, classnames, clip_model)
    with torch.no_grad():  # trained values: the layers' maps differ, MMRL++'s zero-initialised B are not 0
        for p in model.representation_learner.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("variant, expected", [
    # MMRL: space tokens 5 x 512 = 2,560; one Linear 512 -> 768 per layer 6..12 into the image tower,
    # 7 x (393,216 + 768) = 2,757,888, and 512 -> 512 into the text tower, 7 x (262,144 + 512) = 1,838,592;
    # proj_rep 768 x 512 = 393,216
    ("mmrl", 4_992_256),
    # MMRL++: space tokens 2,560; image aligner: shared weight 768 x 512 = 393,216 plus per layer A 768 x 4,
    # B 4 x 512 and a bias of 768 (5,888), 7 x 5,888 = 41,216; text aligner: 512 x 512 = 262,144 plus
    # 7 x (2,048 + 2,048 + 512) = 32,256; proj_rep's update A 768 x 64 + B 64 x 512 = 81,920
    ("mmrlpp", 813_312),
])
def test_trainable_parameter_counts_on_vit_b16(vit_b16, variant, expected):
    model = MMRLCLIP(trainers.build_cfg("MMRL", VARIANT=variant), CLASSNAMES, vit_b16)
    assert count(model) == count(model.representation_learner) == expected
    state = trainable_state_dict(model.representation_learner)
    # a checkpoint holds these tensors and the 64-bit fingerprint of the classes they were trained on
    assert sum(v.numel() for v in state.values()) == expected + 1 and state["trained_on"].dtype == torch.int64


# -- the released forward, on CLIP's own blocks ----------------------------------------------------------
def stock_block(block, x, mask=None):
    """One of CLIP's residual blocks on batch-first tokens, with ``mask`` as its attention mask."""
    saved, block.attn_mask = block.attn_mask, mask
    try:
        return block(x.permute(1, 0, 2)).permute(1, 0, 2)
    finally:
        block.attn_mask = saved


def put_tokens(x, tokens, layer, layers, beta):
    """The released step before ``layer``: tokens inserted after the first token, later written over
    (MMRL++: blended with what the slots hold)."""
    tokens, n = tokens.expand(x.shape[0], -1, -1), tokens.shape[0]
    if layer == layers[0]:
        return torch.cat([x[:, :1], tokens, x[:, 1:]], dim=1)
    if beta is not None:
        tokens = beta * tokens + (1 - beta) * x[:, 1:1 + n]
    return torch.cat([x[:, :1], tokens, x[:, 1 + n:]], dim=1)


def released_features(clip_model, model, images, ids):
    """Normalised class-token, representation and text features as the released code computes them:
    tokens after CLS and after SOS (all 77 text positions, the causal mask rebuilt for the longer
    sequence, EOT read n places on), the representation feature from ln_post of those tokens."""
    learner, layers, beta = model.representation_learner, model.rep_layers, model.beta
    text_tokens, visual_tokens = learner()
    n = text_tokens[0].shape[0]
    v = clip_model.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = v.ln_pre(torch.cat([v.class_embedding.expand(len(images), 1, -1), x], dim=1) + v.positional_embedding)
    for i, block in enumerate(v.transformer.resblocks):
        if i + 1 in layers:
            x = put_tokens(x, visual_tokens[layers.index(i + 1)], i + 1, layers, beta)
        x = stock_block(block, x)
    image = v.ln_post(x[:, 0]) @ v.proj
    proj_rep = learner.proj_rep if model.variant == "mmrl" else v.proj + learner.proj_rep_A @ learner.proj_rep_B
    representation = v.ln_post(x[:, 1:1 + n]).mean(dim=1) @ proj_rep
    t = clip_model.token_embedding(ids) + clip_model.positional_embedding
    for i, block in enumerate(clip_model.transformer.resblocks):
        if i + 1 in layers:
            t = put_tokens(t, text_tokens[layers.index(i + 1)], i + 1, layers, beta)
        length = t.shape[1]
        t = stock_block(block, t, torch.full((length, length), float("-inf")).triu(1))
    text = clip_model.ln_final(t)[torch.arange(len(ids)), ids.argmax(dim=-1) + n] @ clip_model.text_projection
    return [F.normalize(f, dim=-1) for f in (image, representation, text)]


@pytest.mark.parametrize("variant", ["mmrl", "mmrlpp"])
def test_the_released_forward_and_the_test_logits(small_clip, variant):
    model = build(small_clip, VARIANT=variant, BETA=0.6)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids = tokenize([f"a photo of a {c.replace('_', ' ')}." for c in CLASSNAMES])
    with torch.no_grad():
        expected = released_features(small_clip, model, images, ids)
        for got, want in zip(model.outputs(images), expected):
            assert (got - want).abs().max() < 1e-5
        image, representation, text = expected
        zero_shot = F.normalize(small_clip.encode_image(images), dim=-1)
        assert (image - zero_shot).abs().max() > 1e-3  # the tokens reach the class token
        scale = small_clip.logit_scale.exp()
        fused = 0.7 * scale * image @ text.t() + 0.3 * scale * representation @ text.t()
        assert model.fused and (model(images) - fused).abs().max() < 1e-4
        assert (model(images, text_state=model.text_state()) - fused).abs().max() < 1e-4  # evaluation's cache
        set_fast_paths(model, False)  # the library's blocks over the 77 text positions
        assert (model(images) - fused).abs().max() < 1e-4
        set_fast_paths(model, True)
        model.fused = False
        assert (model(images) - scale * image @ text.t()).abs().max() < 1e-4


def test_the_loss_is_the_released_mix(small_clip):
    model = build(small_clip, ALPHA=0.6, REG_WEIGHT=3.0)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([2, 0])
    stub = types.SimpleNamespace(model=model, device=torch.device("cpu"))
    loss, logits = MMRL.compute_loss(stub, images, labels)
    loss.backward()
    assert all(p.grad is not None for p in model.representation_learner.parameters())
    ids = tokenize([f"a photo of a {c.replace('_', ' ')}." for c in CLASSNAMES])
    with torch.no_grad():
        image, representation, text = model.outputs(images)
        zero_shot_image = F.normalize(small_clip.encode_image(images), dim=-1)
        zero_shot_text = F.normalize(small_clip.encode_text(ids), dim=-1)
    scale = small_clip.logit_scale.exp()
    expected = (0.6 * F.cross_entropy(scale * image @ text.t(), labels)
                + 0.4 * F.cross_entropy(scale * representation @ text.t(), labels)
                + 3.0 * (1 - (image * zero_shot_image).sum(-1).mean())
                + 3.0 * (1 - (text * zero_shot_text).sum(-1).mean()))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    fused = 0.6 * scale * image @ text.t() + 0.4 * scale * representation @ text.t()
    assert (logits.detach() - fused).abs().max() < 1e-4  # what the training accuracy reads


def test_auto_test_logits_fuse_only_on_the_classes_trained_on(small_clip, capsys):
    base, new = CLASSNAMES[:2], ["tabby cat", "tree"]
    trained = trainable_state_dict(build(small_clip, base, "EuroSAT").representation_learner)

    def fused(classnames, dataset="EuroSAT", setting="auto"):
        trainer = object.__new__(MMRL)
        trainer.model = build(small_clip, classnames, dataset, TEST_LOGITS=setting)
        trainer.model.representation_learner.load_state_dict(trained)
        MMRL.choose_test_logits(trainer, "the loaded weights were trained on these classes")
        return trainer.model.fused
    assert fused(base)  # base-to-new: base classes, and few-shot
    assert not fused(new)  # the new classes
    assert not fused(base, dataset="ImageNetV2")  # another dataset with the same classes (the released rule)
    assert "Test logits: class-token (the loaded weights were trained on other classes)" in capsys.readouterr().out
    assert fused(new, setting="fused") and not fused(base, setting="class_token")


def test_the_released_per_dataset_values_go_into_the_run_config():
    def settings(config, dataset):
        cfg = trainers.build_cfg()
        cfg.merge_from_file(os.path.join(ROOT, "configs", "trainers", "MMRL", f"{config}.yaml"))
        cfg.DATASET.NAME = dataset
        return effective_settings(cfg)
    cfg = trainers.build_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "trainers", "MMRL", "vit_b16.yaml"))
    cfg.DATASET.NAME = "EuroSAT"
    cfg.freeze()
    MMRL.check_cfg(object.__new__(MMRL), cfg)
    assert (cfg.TRAINER.MMRL.REG_WEIGHT, cfg.TRAINER.MMRL.REP_DIM) == (0.01, 2048) and cfg.is_frozen()
    assert settings("vit_b16_few_shot", "StanfordCars").REG_WEIGHT == 7.0
    synthetic = settings("vit_b16", "SyntheticShapes")  # not in the table: the config's values
    assert (synthetic.REG_WEIGHT, synthetic.REP_DIM) == (1.0, 512)
    cross = settings("vit_b16_cross_datasets", "EuroSAT")  # MMRL's cross-dataset runs keep 0.2 and 512, as released
    assert (cross.REG_WEIGHT, cross.REP_DIM) == (0.2, 512)
    dtd = settings("vit_b16_mmrlpp", "DescribableTextures")
    assert (dtd.VARIANT, dtd.BETA, dtd.REG_WEIGHT) == ("mmrlpp", 0.9, 7.0)
    assert settings("vit_b16_mmrlpp_cross_datasets", "ImageNetA").BETA == 0.8  # the target's BETA at test time
    assert settings("vit_b16_mmrlpp_cross_datasets", "ImageNet").REG_WEIGHT == 0.1


@pytest.mark.parametrize("keys, message", [
    ({"VARIANT": "mmrl+"}, 'VARIANT is "mmrl\\+"; use mmrl'),
    ({"REP_LAYERS": [3, 2]}, r"REP_LAYERS is \[3, 2\]; give the layers"),
    ({"REP_LAYERS": [2, 4]}, r"REP_LAYERS \[2, 4\] goes past this CLIP's 3 layers; use layers 1 to 3"),
    ({"ALPHA": 1.5}, "ALPHA is 1.5; it is a share"),
    ({"N_REP_TOKENS": 0}, "N_REP_TOKENS is 0; it must be a whole number of at least 1"),
    ({"TEST_LOGITS": "rep"}, 'TEST_LOGITS is "rep"; use auto'),
    ({"DATASET_TABLE": "B2N"}, 'DATASET_TABLE is "B2N"; use base2new'),
])
def test_config_errors_are_named(small_clip, keys, message):
    with pytest.raises(ValueError, match="TRAINER.MMRL: " + message):
        build(small_clip, **keys)


def test_the_reference_path_names_a_prompt_too_long_for_the_tokens(small_clip):
    model = build(small_clip, ["dog", " ".join(["cat"] * 68)])  # its EOT at 74: 5 more tokens pass 77
    with torch.no_grad():
        assert model.text_features().shape[0] == 2  # the fast path runs the longer sequence
        set_fast_paths(model, False)
        with pytest.raises(ValueError, match="longest class prompt ends at token 75 and would be cut"):
            model.text_features()


# -- runs: the scripts, and an exact resume --------------------------------------------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_fake_dataset("eurosat", str(root), num_classes=4, images_per_class=4)
    return str(root)


def test_base2new_through_the_scripts(data_root, tiny_clip_path, tmp_path):
    run, log, test_log = base2new_through_scripts("mmrl", "eurosat", data_root, tiny_clip_path, tmp_path,
                                                  ["OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "4"])
    assert run.parts[-3:] == ("MMRL", "vit_b16", "seed1")
    assert "REG_WEIGHT 0.01, REP_DIM 2048 for EuroSAT" in log and "REP_DIM: 2048" in (run / "config.yaml").read_text()
    assert "Test logits: fused" in log
    state = torch.load(run / "MultiModalRepresentationLearner" / "model.pth.tar-1", weights_only=True)["state_dict"]
    # 2,048-wide space (EuroSAT's released value) mapped into the tiny CLIP's 64-wide towers, 7 layers each
    assert state["compound_rep_tokens"].shape == (5, 2048)
    assert state["compound_rep_tokens_r2vproj.6.weight"].shape == (64, 2048)
    assert "(epoch = 1)" in test_log
    assert "Test logits: class-token (the loaded weights were trained on other classes)" in test_log


def run_mmrl(data_root, clip_path, out, kill_after_epoch=None):
    """A 2-epoch MMRL++ run on the base classes: the weights it ends with."""
    opts = ["OPTIM.MAX_EPOCH", "2", "DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", "base", "TEST.NO_TEST",
            "True", "DATALOADER.TRAIN_X.BATCH_SIZE", "2"]
    run_in_process(train_argv(data_root, clip_path, out, "MMRL", "vit_b16_mmrlpp", dataset="eurosat", opts=opts),
                   kill_after_epoch)
    return torch.load(out / "MultiModalRepresentationLearner" / "model.pth.tar-2", weights_only=True)["state_dict"]


def test_a_killed_run_resumes_to_the_same_weights(data_root, tiny_clip_path, tmp_path):
    straight = run_mmrl(data_root, tiny_clip_path, tmp_path / "straight")
    with pytest.raises(Killed):
        run_mmrl(data_root, tiny_clip_path, tmp_path / "resumed", kill_after_epoch=1)
    resumed = run_mmrl(data_root, tiny_clip_path, tmp_path / "resumed")
    logs = [path.read_text() for path in (tmp_path / "resumed").glob("log.txt*")]  # the resumed run's is dated
    assert any("Found checkpoint" in log and "Resum" not in log.split("Found checkpoint")[0] for log in logs)
    assert set(resumed) == set(straight)
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name
