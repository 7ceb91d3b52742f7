"""DPT (CAVPT): counts from the spec, class selection, prompt placement, the two-stage loss,
per-part optimisers, class-set transfer, config errors."""
import pytest
import torch
import torch.nn.functional as F

import trainers
from dassl.engine.trainer import TrainerBase
from dassl.utils.torchtools import load_trainable_state_dict, trainable_state_dict
from trainers.clip_prompting import tokenize, vit_b16_shaped_clip
from trainers.dpt import DPT, DPTCLIP, layer_loss

CLASSNAMES = ["dog", "sea_lion", "airliner"]


def make_cfg(**keys):
    small = {"N_CTX": 4, "VPT_N_CTX": 3, "CPN": 2}  # small for the tiny CLIP
    return trainers.build_cfg("DPT", **{**small, **keys})


def count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def trainer_for(model, cfg, epoch):
    """The DPT trainer's loss and optimiser code around a given model, without data or engine loop."""
    trainer = object.__new__(DPT)
    TrainerBase.__init__(trainer)
    trainer.cfg, trainer.model, trainer.epoch = cfg, model, epoch
    return trainer


def test_trainable_parameter_counts_on_vit_b16():
    cfg = make_cfg(N_CTX=16, VPT_N_CTX=10, CPN=10, BOTTOMLIMIT=12)
    model = DPTCLIP(cfg, CLASSNAMES, vit_b16_shaped_clip())
    assert count(model.prompt_learner) == 8_192
    assert count(model.ctx_learner) == 84_480                 # 11 blocks x 10 tokens x 768
    assert count(model.extractor) == 1_043_712 + 768 * 3      # one CAVPT layer + its C-way classifier
    assert count(model) == 1_136_384 + 768 * 3
    deeper = DPTCLIP(make_cfg(N_CTX=16, VPT_N_CTX=10, BOTTOMLIMIT=8), CLASSNAMES, vit_b16_shaped_clip())
    assert count(deeper.extractor) == 5 * (1_043_712 + 768 * 3) and count(deeper.ctx_learner) == 7 * 10 * 768


def test_classes_are_selected_by_zero_shot_clip_with_the_dataset_template(tiny_clip_model):
    cfg = make_cfg()
    cfg.DATASET.NAME = "OxfordPets"
    model = DPTCLIP(cfg, CLASSNAMES, tiny_clip_model)
    images = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        text = tiny_clip_model.encode_text(tokenize([f"a photo of a {c.replace('_', ' ')}, a type of pet."
                                                     for c in CLASSNAMES]))
        zero_shot = F.normalize(tiny_clip_model.encode_image(images), dim=-1) @ F.normalize(text, dim=-1).t()
        out = model.outputs(images)
    assert out["top_k"].shape == (4, 2)
    assert torch.equal(out["top_k"], zero_shot.topk(2, dim=-1).indices)
    assert out["layer_logits"].shape == (1, 4, 2, 3)  # (CAVPT layers, B, K, C)


def test_prompts_are_appended_for_one_block_and_dropped(tiny_clip_model):
    model = DPTCLIP(make_cfg(BOTTOMLIMIT=10), CLASSNAMES, tiny_clip_model)
    lengths = []
    encoder = model.image_encoder
    forward = encoder.forward

    def spying_forward(images, prompts=None, hook=None):
        if hook is None:
            return forward(images, prompts)

        def spy(index, x):
            x = hook(index, x)
            lengths.append(x.shape[1])
            return x
        return forward(images, prompts, hook=spy)
    encoder.forward = spying_forward
    with torch.no_grad():
        model(torch.randn(2, 3, 224, 224))
    assert lengths == [50 + 3] * 9 + [50 + 2] * 3  # 9 VPT blocks, then 3 CAVPT blocks with K = 2 tokens


@pytest.mark.parametrize("epoch", [0, 30])
def test_both_stages_train_every_part_and_nothing_of_clip(tiny_clip_model, epoch):
    cfg = make_cfg(CPN=3)  # K = C: every label is among the selected classes
    model = DPTCLIP(cfg, CLASSNAMES, tiny_clip_model)
    loss, logits = trainer_for(model, cfg, epoch).compute_loss(torch.randn(2, 3, 224, 224), torch.tensor([0, 2]))
    assert logits.shape == (2, 3)
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert name.split(".")[0] in ("prompt_learner", "ctx_learner", "extractor"), name
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert not any(p.requires_grad for p in tiny_clip_model.parameters())


def test_loss_follows_the_two_stage_schedule(tiny_clip_model):
    cfg = make_cfg(ALPHA=0.3, PRETRAIN_EPOCHS=2)
    model = DPTCLIP(cfg, CLASSNAMES, tiny_clip_model)
    images, label = torch.randn(2, 3, 224, 224), torch.tensor([1, 2])
    with torch.no_grad():
        out = model.outputs(images)
        aux = 0.3 * layer_loss(out["layer_logits"], out["top_k"], label)
        guided = (F.cross_entropy(out["frozen_image_logits"], label) + F.cross_entropy(out["fixed_text_logits"], label)
                  + 0.1 * F.cross_entropy(out["logits"], label))
        for epoch, expected in ((1, guided + aux), (2, F.cross_entropy(out["logits"], label) + aux)):
            loss, _ = trainer_for(model, cfg, epoch).compute_loss(images, label)
            assert torch.allclose(loss, expected, atol=1e-5), epoch


def test_layer_loss_uses_only_the_slots_of_the_label():
    logits = torch.randn(2, 2, 3, 5)  # (layers, B, K, C)
    top_k = torch.tensor([[4, 1, 0], [2, 3, 1]])
    label = torch.tensor([1, 0])  # image 0: slot 1; image 1: label not selected
    expected = F.cross_entropy(torch.stack([logits[0, 0, 1], logits[1, 0, 1]]), torch.tensor([1, 1]))
    assert torch.allclose(layer_loss(logits, top_k, label), expected)
    assert layer_loss(logits, top_k, torch.tensor([3, 4])).item() == 0.0


@pytest.mark.filterwarnings("ignore:Detected call of")  # schedulers stepped without training steps
def test_each_part_gets_its_own_optimiser_and_learning_rate(tiny_clip_model):
    cfg = make_cfg(TEXT_LR=0.002)
    cfg.OPTIM.LR, cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.MAX_EPOCH = 0.01, 10, 60
    cfg.OPTIM.WARMUP_TYPE, cfg.OPTIM.LR_SCHEDULER = "constant", "cosine"
    trainer = trainer_for(DPTCLIP(cfg, CLASSNAMES, tiny_clip_model), cfg, 0)
    trainer.register_learners()
    assert trainer.get_model_names() == ["extractor", "ctx_learner", "prompt_learner"]
    for _ in range(3):
        trainer.update_lr()
    lrs = {name: trainer._optims[name].param_groups[0]["lr"] for name in trainer.get_model_names()}
    assert lrs["extractor"] == lrs["ctx_learner"] == pytest.approx(1e-5)  # still warming up (10 epochs)
    assert 0.0019 < lrs["prompt_learner"] < 0.002                        # warmup 1 epoch, then cosine from 0.002
    assert trainer.get_current_lr() == lrs["extractor"]


def test_weights_trained_on_base_classes_load_for_new_classes(tiny_clip_model):
    base = DPTCLIP(make_cfg(), CLASSNAMES, tiny_clip_model)
    new = DPTCLIP(make_cfg(), ["cat", "tram"], tiny_clip_model)
    load_trainable_state_dict(new.extractor, trainable_state_dict(base.extractor))
    assert torch.equal(new.extractor.layers[0].meta_net.weight, base.extractor.layers[0].meta_net.weight)
    assert new.extractor.layers[0].classifier.weight.shape == (2, 64)  # training-only head keeps its size
    with torch.no_grad():
        cached = new.text_state()  # evaluation's cache: T unnormalised (the prompts need it) and normalised
        images = torch.randn(2, 3, 224, 224)
        assert torch.equal(new(images, text_state=cached), new(images))


@pytest.mark.parametrize("keys, message", [
    ({"BOTTOMLIMIT": 13}, "BOTTOMLIMIT is 13"),
    ({"BOTTOMLIMIT": 0}, "BOTTOMLIMIT is 0"),
    ({"CPN": 0}, "CPN is 0"),
    ({"ALPHA": -0.1}, "ALPHA is -0.1"),
    ({"TEXT_LR": 0.0}, "TEXT_LR is 0.0"),
])
def test_bad_config_gives_a_clear_error(tiny_clip_model, keys, message):
    with pytest.raises(ValueError, match="TRAINER.DPT: " + message):
        DPTCLIP(make_cfg(**keys), CLASSNAMES, tiny_clip_model)
