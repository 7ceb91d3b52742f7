"""TCP: the released parameter count, class-aware tokens from the TKE spliced in before the
configured text block (checked against stock CLIP's own modules, for trained and for new classes),
the knowledge-guided loss on TCP's own hand-crafted prompt, the released prompt texts, config
errors, base-to-new through the scripts, and an exact resume."""
import os
import re
import subprocess

import pytest
import torch
import torch.nn.functional as F

import trainers
from dassl.utils import trainable_state_dict
from datasets.fake import make_fake_dataset
from results.provenance import read_method_settings
from train_runs import (Killed, base2new_through_scripts, restore_streams,  # noqa: F401  (fixture)
                        run_in_process, train_argv)
from trainers.clip_prompting import tiny_clip, tokenize, vit_b16_shaped_clip
from trainers.tcp import TCP, TCPCLIP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE, NEW = ["dog", "sea_lion"], ["airliner", "tabby_cat", "tree"]


@pytest.fixture(scope="module")
def small_clip():
    """OpenAI's architecture at 32 px, 2 blocks per tower: the class-aware tokens enter before block 1."""
    return tiny_clip(image_resolution=32, layers=2, patch_size=16)


def tcp_cfg(dataset="OxfordPets", **keys):
    cfg = trainers.build_cfg("TCP", **{"LAYER": 1, **keys})
    cfg.DATASET.NAME = dataset
    return cfg


def build(cfg, classnames, clip_model, seed=0):
    torch.manual_seed(seed)
    model = TCPCLIP(cfg, classnames, clip_model)
    with torch.no_grad():  # a trained context and TKE, not their initial values
        for p in model.prompt_learner.parameters():
            p.normal_(std=0.2)
    return model


def trainer_for(model, cfg):
    """A TCP trainer around an already built model, enough to call compute_loss."""
    trainer = object.__new__(TCP)
    trainer.model, trainer.cfg, trainer.device = model, cfg, torch.device("cpu")
    return trainer


@torch.no_grad()
def stock_hand_crafted(clip_model, template, classnames):
    texts = [template.format(c.replace("_", " ")) for c in classnames]
    return F.normalize(clip_model.encode_text(tokenize(texts)), dim=-1)


@torch.no_grad()
def stock_tcp_text(clip_model, learner, texts, hand, layer):
    """TCP's class features computed with stock CLIP's own modules (sequence-first blocks): the
    context after SOS, then the TKE's tokens, linear2(QuickGELU(linear1(hand))), over those rows
    before block ``layer``."""
    net = learner.meta_net
    h = hand @ net.linear1.weight.t() + net.linear1.bias
    h = h * torch.sigmoid(1.702 * h)
    tokens = (h @ net.linear2.weight.t() + net.linear2.bias).reshape(len(texts), learner.n_ctx, -1)
    ids = tokenize(texts)
    n = learner.n_ctx
    x = clip_model.token_embedding(ids)
    x = torch.cat([x[:, :1], learner.ctx.expand(len(texts), -1, -1), x[:, 1 + n:]], dim=1)
    x = (x + clip_model.positional_embedding).permute(1, 0, 2)
    for index, block in enumerate(clip_model.transformer.resblocks):
        if index == layer:
            x = torch.cat([x[:1], tokens.permute(1, 0, 2), x[1 + n:]])
        x = block(x)
    x = clip_model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(len(texts)), ids.argmax(dim=-1)] @ clip_model.text_projection


def test_trainable_parameters_on_vit_b16_are_the_released_modules():
    """The released PromptLearner: ctx (4, 512); meta_net Linear(512, 512 // 4) -> QuickGELU ->
    Linear(128, 4 * 512), both with bias. 4 x 512 + (512 x 128 + 128) + (128 x 2048 + 2048)
    = 2,048 + 65,664 + 264,192 = 331,904."""
    with torch.device("meta"):  # the shapes alone: no weights drawn for the frozen CLIP
        clip_model = vit_b16_shaped_clip()
    model = TCPCLIP(trainers.build_cfg("TCP"), BASE, clip_model)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompt_learner.ctx": 2_048, "prompt_learner.meta_net.linear1.weight": 65_536,
                         "prompt_learner.meta_net.linear1.bias": 128,
                         "prompt_learner.meta_net.linear2.weight": 262_144,
                         "prompt_learner.meta_net.linear2.bias": 2_048}
    assert sum(trainable.values()) == 331_904
    # a checkpoint holds exactly these tensors: no frozen CLIP, no class prompts, no frozen features
    assert sum(v.numel() for v in trainable_state_dict(model.prompt_learner).values()) == 331_904


def test_class_aware_tokens_replace_the_context_before_the_layer_also_for_new_classes(small_clip):
    """Trained on base classes, evaluated on new ones: the new model's TKE reads the new classes'
    hand-crafted features, and its tokens overwrite the context rows before block LAYER only."""
    cfg = tcp_cfg()
    base = build(cfg, BASE, small_clip)
    new = TCPCLIP(cfg, NEW, small_clip)
    new.prompt_learner.load_state_dict(trainable_state_dict(base.prompt_learner))
    for model, names in ((base, BASE), (new, NEW)):
        hand = stock_hand_crafted(small_clip, "a photo of a {}, a type of pet.", names)
        texts = [f"X X X X {c.replace('_', ' ')}, a type of pet." for c in names]
        with torch.no_grad():
            ours = model.encode_text(model.prompts())
            assert torch.allclose(model.hand_crafted_text_features(), hand, atol=1e-6)
            tokens = model.prompts()["class_tokens"]
        assert tokens.shape == (len(names), 4, 64) and not torch.allclose(tokens[0], tokens[1])  # per class
        assert torch.allclose(ours, stock_tcp_text(small_clip, model.prompt_learner, texts, hand, 1), atol=1e-5)
    # block 0 sees the learned context: a model that overwrote it at the input would differ
    with torch.no_grad():
        at_input = stock_tcp_text(small_clip, new.prompt_learner, [f"X X X X {c.replace('_', ' ')}, a type of pet."
                                                                   for c in NEW], hand, 0)
    assert (ours - at_input).abs().max() > 1e-3


def test_loss_adds_the_distance_to_tcps_own_hand_crafted_prompt(small_clip):
    cfg = tcp_cfg("FGVCAircraft")  # TCP's own "a photo of an aircraft {}.", not CoOp's template
    model = build(cfg, NEW, small_clip)
    torch.manual_seed(1)
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([2, 0])
    with torch.no_grad():
        loss, logits = trainer_for(model, cfg).compute_loss(images, labels)
        hand = stock_hand_crafted(small_clip, "a photo of an aircraft {}.", NEW)
        texts = [f"X X X X {c.replace('_', ' ')}, a type of aircraft." for c in NEW]
        text = F.normalize(stock_tcp_text(small_clip, model.prompt_learner, texts, hand, 1), dim=-1)
        image = F.normalize(small_clip.encode_image(images), dim=-1)
    expected_logits = small_clip.logit_scale.exp() * image @ text.t()
    distance = 1 - (text * hand).sum(-1).mean()
    assert distance > 1e-3
    assert torch.allclose(logits, expected_logits, atol=1e-4)
    assert torch.allclose(loss, F.cross_entropy(expected_logits, labels) + 8.0 * distance, atol=1e-4)


@pytest.mark.parametrize("dataset, tail, prompt, template", [
    ("OxfordPets", "released", "X X X X tabby cat, a type of pet.", "a photo of a {}, a type of pet."),
    ("UCF101", "released", "X X X X person doing tabby cat.", "a photo of a person doing {}."),
    ("DescribableTextures", "released", "X X X X tabby cat texture.", "a photo of a {}, a type of texture."),
    ("StanfordCars", "released", "X X X X tabby cat, a type of car.", "a photo of a {}."),  # "." added
    ("Food101", "released", "X X X X tabby cat, a type of food.", "a photo of a {}, a type of food."),
    ("EuroSAT", "released", "X X X X tabby cat.", "a centered satellite photo of {}."),
    ("SyntheticShapes", "released", "X X X X tabby cat.", "a photo of a {}."),
    ("OxfordPets", "{}.", "X X X X tabby cat.", "a photo of a {}, a type of pet."),
    ("ImageNet", "a {} of sorts", "X X X X a tabby cat of sorts.", "a photo of a {}."),
])
def test_released_prompt_texts(small_clip, dataset, tail, prompt, template):
    model = TCPCLIP(tcp_cfg(dataset, PROMPT_TAIL=tail), ["tabby_cat"], small_clip)
    assert torch.equal(model.prompt_learner.classes.tokenized_prompts, tokenize([prompt]))
    assert model.template == template


@pytest.mark.parametrize("keys, message", [
    ({"LAYER": 0}, r"LAYER is 0; .* must be 1\.\.1 for this CLIP's 2 text blocks"),
    ({"LAYER": 2}, r"LAYER is 2; .* must be 1\.\.1"),
    ({"N_CTX": 0}, "N_CTX is 0; TCP needs at least one context token"),
    ({"TKE_REDUCTION": 0}, "TKE_REDUCTION is 0;"),
    ({"TKE_REDUCTION": 65}, "TKE_REDUCTION 65 leaves the TKE no hidden unit"),
    ({"W": -1.0}, "W is -1.0; the weight of the knowledge-guided loss must be >= 0"),
    ({"ADAM_EPS": 0.0}, "ADAM_EPS is 0.0; Adam's eps must be positive"),
    ({"PROMPT_TAIL": "a photo"}, 'PROMPT_TAIL is "a photo"; use "released"'),
])
def test_bad_config_gives_a_clear_error(small_clip, keys, message):
    with pytest.raises(ValueError, match=message):
        TCPCLIP(tcp_cfg(**keys), BASE, small_clip)


def test_the_trainer_refuses_bad_keys_before_building():
    with pytest.raises(ValueError, match='TRAINER.TCP.PREC is "bf16"'):
        object.__new__(TCP).check_cfg(trainers.build_cfg("TCP", PREC="bf16"))
    with pytest.raises(ValueError, match='PROMPT_TAIL is "{} {}"'):
        object.__new__(TCP).check_cfg(trainers.build_cfg("TCP", PROMPT_TAIL="{} {}"))


@pytest.mark.parametrize("protocol, args, config", [
    ("base2new_train", ["caltech101", "1"], "vit_b16"),
    ("base2new_test", ["imagenet", "1"], "vit_b16_imagenet"),  # the released train.py's 25 epochs
    ("base2new_train", ["sun397", "1"], "vit_b16_sun397"),
    ("few_shot", ["dtd", "1", "4"], "vit_b16"),  # the same setting on all classes (released issue #7)
    ("xd_train", ["1"], "vit_b16_imagenet"),  # trained on ImageNet
])
def test_scripts_pick_the_released_schedule(protocol, args, config):
    done = subprocess.run(["bash", f"scripts/tcp/{protocol}.sh", *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, DRY_RUN="1", OUTPUT="/nonexistent-output"))
    assert done.returncode == 0, done.stderr
    assert f"--config-file configs/trainers/TCP/{config}.yaml " in done.stdout
    if protocol == "base2new_test":
        assert "--load-epoch 25 " in done.stdout


# -- end to end with the tiny 12-layer CLIP ------------------------------------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_fake_dataset("oxford_pets", str(root), num_classes=4, images_per_class=6)
    return str(root)


def test_base2new_through_the_scripts(data_root, tiny_clip_path, tmp_path):
    run, log, test_log = base2new_through_scripts("tcp", "oxford_pets", data_root, tiny_clip_path, tmp_path,
                                                  ["OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "2"])
    assert run.parts[-3:] == ("TCP", "vit_b16", "seed1") and "Adam eps: 0.001" in log
    assert 'Class prompts: "X X X X ' in log and ', a type of pet."' in log  # the released tail
    # tiny CLIP (width 64, embed 64): 4 x 64 + (64 x 16 + 16) + (16 x 256 + 256) = 5,648
    assert re.search(r"^# trainable params: 5,648$", log, re.M)
    state = torch.load(run / "prompt_learner" / "model.pth.tar-1", weights_only=True)["state_dict"]
    assert sum(v.numel() for v in state.values()) == 5_648
    settings, params = read_method_settings(str(run / "log.txt"), "TCP")
    assert settings["LAYER"] == "8" and settings["ADAM_EPS"] == "0.001" and params == "5,648"
    assert "(epoch = 1)" in test_log


def run_tcp(data_root, clip_path, out, kill_after_epoch=None):
    """A 2-epoch TCP run (2 batches per epoch, random crops and flips): (trainer, epochs trained)."""
    return run_in_process(train_argv(data_root, clip_path, out, "TCP", "vit_b16", dataset="oxford_pets", opts=[
        "OPTIM.MAX_EPOCH", "2", "DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", "base",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "2"]), kill_after_epoch)


def test_a_killed_run_resumes_bitwise(data_root, tiny_clip_path, tmp_path):
    straight, _ = run_tcp(data_root, tiny_clip_path, tmp_path / "straight")
    assert [g["eps"] for g in straight.optim.param_groups] == [1e-3]
    with pytest.raises(Killed):
        run_tcp(data_root, tiny_clip_path, tmp_path / "resumed", kill_after_epoch=1)
    assert run_tcp(data_root, tiny_clip_path, tmp_path / "resumed")[1] == [1]
    log = max((tmp_path / "resumed").glob("log.txt-*")).read_text()  # log.txt holds the killed run's log
    assert "epoch [1/2]" not in log and "epoch [2/2]" in log  # the second run trained epoch 2 only
    a, b = (torch.load(tmp_path / run / "prompt_learner" / "model.pth.tar-2", weights_only=True)
            for run in ("straight", "resumed"))
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name in a["state_dict"]:
        assert torch.equal(a["state_dict"][name], b["state_dict"][name]), name
    assert a["optimizer"]["param_groups"][0]["eps"] == b["optimizer"]["param_groups"][0]["eps"] == 1e-3
