"""KgCoOp, PromptSRC, MMA and CLIP-LoRA: parameter counts of the released code, identities with the
base models at initial values, losses against an independent computation with stock CLIP, Gaussian
prompt aggregation, the adapter and LoRA mechanics, and config errors."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import trainers
from dassl.utils import trainable_state_dict
from trainers.clip_prompting import set_fast_paths, tokenize, vit_b16_shaped_clip
from trainers.cliplora import CLIPLoRA, CLIPLoRACLIP
from trainers.coop import CoOpCLIP
from trainers.ivlp import IVLPCLIP
from trainers.kgcoop import KgCoOp, KgCoOpCLIP
from trainers.mma import MMACLIP, ScaleGradient
from trainers.promptsrc import (TEACHER_TEMPLATES, PromptAggregation, PromptSRC, PromptSRCCLIP,
                                gaussian_weights)

CLASSNAMES = ["dog", "sea_lion", "airliner"]


def count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def stock_logits(clip_model, images, texts):
    """Stock CLIP (its own encode_* methods) on the given class prompts."""
    with torch.no_grad():
        text = F.normalize(clip_model.encode_text(tokenize(texts)), dim=-1)
        image = F.normalize(clip_model.encode_image(images), dim=-1)
    return clip_model.logit_scale.exp() * image @ text.t()


def trainer_for(trainer_cls, model, cfg):
    """A trainer around an already built model, enough to call compute_loss."""
    trainer = object.__new__(trainer_cls)
    trainer.model, trainer.cfg, trainer.device = model, cfg, torch.device("cpu")
    return trainer


@pytest.fixture(scope="module")
def vit_b16():
    return vit_b16_shaped_clip()


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 224, 224)


@pytest.mark.parametrize("build, node, keys, learner, expected", [
    (KgCoOpCLIP, "KGCOOP", {}, "prompt_learner", 2_048),                     # 4 x 512
    (PromptSRCCLIP, "PROMPTSRC", {}, "prompt_learner", 46_080),              # 9 x 4 x (512 + 768)
    (PromptSRCCLIP, "PROMPTSRC", {"PROMPT_DEPTH_TEXT": 3, "PROMPT_DEPTH_VISION": 3},
     "prompt_learner", 15_360),                                              # cross-dataset config
    (MMACLIP, "MMA", {}, "adapter_learner", 674_560),                        # 8 layers x (33,312 + 49,952 + 1,056)
    (CLIPLoRACLIP, "CLIPLORA", {}, "lora", 184_320),                         # 12 x 3 x 2 x 2 x (512 + 768)
])
def test_trainable_parameter_counts_on_vit_b16(vit_b16, build, node, keys, learner, expected):
    model = build(trainers.build_cfg(node, **keys), CLASSNAMES, vit_b16)
    assert count(model) == count(getattr(model, learner)) == expected
    # a checkpoint holds exactly these tensors: no frozen CLIP, no frozen features
    state = trainable_state_dict(getattr(model, learner))
    assert sum(v.numel() for v in state.values()) == expected


# -- identities at initial values ------------------------------------------------------------------
def test_kgcoop_at_zero_weight_is_coop(tiny_clip_model, images):
    kgcoop = KgCoOpCLIP(trainers.build_cfg("KGCOOP", W=0.0), CLASSNAMES, tiny_clip_model)
    coop = CoOpCLIP(trainers.build_cfg("COOP", CTX_INIT="a photo of a"), CLASSNAMES, tiny_clip_model)
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        torch.nn.init.normal_(kgcoop.prompt_learner.ctx, std=0.02)  # a trained context, not the template
        coop.prompt_learner.ctx.copy_(kgcoop.prompt_learner.ctx)
        loss, logits = trainer_for(KgCoOp, kgcoop, trainers.build_cfg("KGCOOP", W=0.0)).compute_loss(images, labels)
        assert torch.allclose(logits, coop(images), atol=1e-5)
        assert torch.allclose(loss, F.cross_entropy(coop(images), labels), atol=1e-6)


def test_kgcoop_loss_adds_the_distance_to_the_hand_crafted_prompt(tiny_clip_model, images):
    cfg = trainers.build_cfg("KGCOOP")
    cfg.DATASET.NAME = "DescribableTextures"  # KgCoOp's own DTD prompt, unlike CoOp's "{} texture."
    model = KgCoOpCLIP(cfg, CLASSNAMES, tiny_clip_model)
    labels = torch.tensor([1, 0])
    with torch.no_grad():
        loss, logits = trainer_for(KgCoOp, model, cfg).compute_loss(images, labels)
        names = [c.replace("_", " ") for c in CLASSNAMES]
        learned = F.normalize(tiny_clip_model.encode_text(tokenize([f"a photo of a {c}." for c in names])), dim=-1)
        hand = F.normalize(tiny_clip_model.encode_text(
            tokenize([f"a photo of a {c}, a type of texture." for c in names])), dim=-1)
    expected_logits = stock_logits(tiny_clip_model, images, [f"a photo of a {c}." for c in names])
    distance = 1 - (learned * hand).sum(-1).mean()
    assert distance > 1e-3  # the two prompts really differ
    assert torch.allclose(logits, expected_logits, atol=1e-4)
    assert torch.allclose(loss, F.cross_entropy(expected_logits, labels) + 8.0 * distance, atol=1e-4)


def promptsrc_cfg(**keys):
    return trainers.build_cfg("PROMPTSRC", PROMPT_DEPTH_TEXT=4, PROMPT_DEPTH_VISION=3, **keys)


@pytest.fixture
def three_teacher_templates(monkeypatch):
    """Three of the 60 teacher templates: the same averaging at a twentieth of the cost."""
    assert len(TEACHER_TEMPLATES) == 60 and TEACHER_TEMPLATES[-1] == "itap of the {}."
    templates = (TEACHER_TEMPLATES[0], TEACHER_TEMPLATES[36], TEACHER_TEMPLATES[59])
    monkeypatch.setattr(trainers.promptsrc, "TEACHER_TEMPLATES", templates)
    return templates


def test_promptsrc_at_zero_loss_weights_is_ivlp(tiny_clip_model, images, three_teacher_templates):
    torch.manual_seed(0)
    promptsrc = PromptSRCCLIP(promptsrc_cfg(TEXT_LOSS_WEIGHT=0, IMAGE_LOSS_WEIGHT=0, LOGIT_LOSS_WEIGHT=0),
                              CLASSNAMES, tiny_clip_model)
    torch.manual_seed(0)
    ivlp = IVLPCLIP(trainers.build_cfg("IVLP", N_CTX_TEXT=4, N_CTX_VISION=4, PROMPT_DEPTH_TEXT=4,
                                       PROMPT_DEPTH_VISION=3), CLASSNAMES, tiny_clip_model)
    assert torch.equal(promptsrc.prompt_learner.vision.deep_ctx, ivlp.prompt_learner.vision.deep_ctx)
    labels = torch.tensor([2, 1])
    with torch.no_grad():
        trainer = trainer_for(PromptSRC, promptsrc, promptsrc_cfg(TEXT_LOSS_WEIGHT=0, IMAGE_LOSS_WEIGHT=0,
                                                                    LOGIT_LOSS_WEIGHT=0))
        loss, logits = trainer.compute_loss(images, labels)
        reference = ivlp(images)
    assert torch.allclose(logits, reference, atol=1e-5)
    assert torch.allclose(loss, F.cross_entropy(reference, labels), atol=1e-6)


def test_promptsrc_loss_matches_stock_clip_teacher(tiny_clip_model, images, three_teacher_templates):
    """The released loss, from stock CLIP: text teacher = mean of unnormalised template features."""
    cfg = promptsrc_cfg()
    model = PromptSRCCLIP(cfg, CLASSNAMES, tiny_clip_model)
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        loss, logits = trainer_for(PromptSRC, model, cfg).compute_loss(images, labels)
        image, text = model.features(images)
        names = [c.replace("_", " ") for c in CLASSNAMES]
        teacher = torch.stack([tiny_clip_model.encode_text(tokenize([t.format(c) for c in names]))
                               for t in three_teacher_templates]).mean(0)
        teacher = F.normalize(teacher, dim=-1)
        frozen_image = F.normalize(tiny_clip_model.encode_image(images), dim=-1)
    scale = tiny_clip_model.logit_scale.exp()
    p_teacher = F.softmax(scale * frozen_image @ teacher.t(), dim=1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(logits, dim=1))).sum() / logits.numel()
    expected = (F.cross_entropy(logits, labels) + 25 * (text - teacher).abs().mean()
                + 10 * (image - frozen_image).abs().mean() + kl)
    assert torch.allclose(loss, expected, atol=1e-5)
    assert model.frozen_text is not None and not model.frozen_text.requires_grad  # computed once, kept


def test_mma_with_silent_adapters_is_zero_shot_clip(tiny_clip_model, images):
    model = MMACLIP(trainers.build_cfg("MMA", ADAPTER_START=0, ADAPTER_SCALE=1.0), CLASSNAMES, tiny_clip_model)
    with torch.no_grad():
        changed = model(images)
        for branch in (model.adapter_learner.text_adapter, model.adapter_learner.visual_adapter):
            for adapter in filter(None, branch):
                adapter.up.weight.zero_()
                adapter.up.bias.zero_()
        silent = model(images)
    expected = stock_logits(tiny_clip_model, images, [f"a photo of a {c.replace('_', ' ')}." for c in CLASSNAMES])
    assert torch.allclose(silent, expected, atol=1e-5)
    assert not torch.allclose(changed, expected, atol=1e-3)


def test_mma_adds_each_adapter_after_its_block_from_the_block_input(tiny_clip_model, images):
    """Released numbering: layer l (from ADAPTER_START) adapts block l-1, reading ln_1 of that block's input."""
    c = {"ADAPTER_START": 9, "ADAPTER_END": 11, "ADAPTER_SCALE": 0.3}
    model = MMACLIP(trainers.build_cfg("MMA", **c), CLASSNAMES, tiny_clip_model)
    learner, visual = model.adapter_learner, tiny_clip_model.visual
    assert [i for i, a in enumerate(learner.visual_adapter) if a is not None] == [9, 10, 11]
    with torch.no_grad():
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(len(x), 1, -1), x], dim=1) + visual.positional_embedding
        x = visual.ln_pre(x).transpose(0, 1)
        for index, block in enumerate(visual.transformer.resblocks):
            out = block(x)  # CLIP's own block, sequence-first
            if 9 <= index + 1 <= 11:
                a = learner.visual_adapter[index + 1]
                out = out + 0.3 * a.up(learner.shared_adapter[index + 1](a.down(block.ln_1(x))))
            x = out
        expected = visual.ln_post(x[0]) @ visual.proj
        assert torch.allclose(model.encode_image(images, None), expected, atol=1e-5)


def test_mma_gradient_scaling_as_released():
    x = torch.ones(3, requires_grad=True)
    (ScaleGradient.apply(x, 0.25) * 2).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 0.5))


def test_lora_starts_as_zero_shot_clip_and_equals_merged_weights(tiny_clip_model, images):
    cfg = trainers.build_cfg("CLIPLORA", PARAMS=["q", "v", "o"], POSITION="half-up", TEMPLATE="dataset")
    cfg.DATASET.NAME = "DescribableTextures"
    model = CLIPLoRACLIP(cfg, CLASSNAMES, tiny_clip_model).eval()
    texts = [f"{c.replace('_', ' ')} texture." for c in CLASSNAMES]  # the dataset's template
    with torch.no_grad():
        assert torch.allclose(model(images), stock_logits(tiny_clip_model, images, texts), atol=1e-5)
        torch.manual_seed(0)
        for name, p in model.lora.named_parameters():
            if name.endswith(".B"):
                p.normal_(std=0.5)
        merged = copy.deepcopy(tiny_clip_model)
        towers = {"text": merged.transformer, "vision": merged.visual.transformer}
        for encoder, blocks in model.lora.items():
            for index, updates in blocks.items():
                attn = towers[encoder].resblocks[int(index)].attn
                width = attn.embed_dim
                for name, start in (("q", 0), ("v", 2 * width)):  # rows of in_proj_weight: q, k, v
                    attn.in_proj_weight[start:start + width] += updates[name].B @ updates[name].A / math.sqrt(2)
                attn.out_proj.weight += updates["o"].B @ updates["o"].A / math.sqrt(2)  # alpha / sqrt(rank)
        lora_logits = model(images)
    assert sorted(model.lora["text"].keys(), key=int) == [str(i) for i in range(6, 12)]
    assert not torch.allclose(lora_logits, stock_logits(tiny_clip_model, images, texts), atol=1e-3)
    assert torch.allclose(lora_logits, stock_logits(merged, images, texts), atol=1e-4)


def test_lora_dropout_acts_in_training_only_and_not_in_the_merged_reference(tiny_clip_model):
    model = CLIPLoRACLIP(trainers.build_cfg("CLIPLORA"), CLASSNAMES, tiny_clip_model)
    with torch.no_grad():
        for name, p in model.lora.named_parameters():
            if name.endswith(".B"):
                p.normal_(std=0.5)
        train_a, train_b = model.encode_text(None), model.encode_text(None)
        model.eval()
        eval_a, eval_b = model.encode_text(None), model.encode_text(None)
    assert not torch.allclose(train_a, train_b) and torch.equal(eval_a, eval_b)
    model.train()
    set_fast_paths(model, False)
    with pytest.raises(RuntimeError, match="cannot express LoRA dropout during training"):
        model.encode_text(None)


# -- Gaussian prompt aggregation -----------------------------------------------------------------
def test_gaussian_weights_are_the_released_normalised_density():
    # N(e; 2, 1) at e = 1, 2, 3 is proportional to exp(-1/2), 1, exp(-1/2)
    assert gaussian_weights(2, 1, 3) == pytest.approx([0.2740686, 0.4518628, 0.2740686], abs=1e-7)
    weights = gaussian_weights(15, 1, 20)  # base-to-new config
    assert sum(weights) == pytest.approx(1.0) and max(weights) == weights[14]
    with pytest.raises(ValueError, match="give every one of the 3 epochs a weight of 0"):
        gaussian_weights(1000, 0.1, 3)


def test_prompt_aggregation_is_the_weighted_sum_over_epochs():
    module = nn.Linear(2, 1, bias=False)
    frozen = nn.Parameter(torch.zeros(1), requires_grad=False)
    module.register_parameter("frozen", frozen)
    aggregation = PromptAggregation(module, gaussian_weights(2, 1, 3))
    assert set(aggregation.params) == {"weight"}
    for epoch, value in enumerate([1.0, 2.0, 4.0]):
        module.weight.data.fill_(value)
        aggregation.add(epoch)
    resumed = PromptAggregation(module, gaussian_weights(2, 1, 3))
    resumed.load_state_dict(aggregation.state_dict())
    resumed.apply()
    # 0.2740686 * 1 + 0.4518628 * 2 + 0.2740686 * 4
    assert module.weight.data.flatten().tolist() == pytest.approx([2.2740687, 2.2740687], abs=1e-6)


# -- config errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("build, node, keys, message", [
    (MMACLIP, "MMA", {"ADAPTER_START": 6, "ADAPTER_END": 5}, "ADAPTER_START 6 and ADAPTER_END 5 must satisfy"),
    (MMACLIP, "MMA", {"ADAPTER_END": 13}, "ADAPTER_END 13 must satisfy 0 <= START <= END <= 12"),
    (MMACLIP, "MMA", {"ADAPTER_SCALE": 0.0}, "ADAPTER_SCALE is 0.0; it must be positive"),
    (CLIPLoRACLIP, "CLIPLORA", {"PARAMS": ["q", "x"]}, r"PARAMS is \['q', 'x'\]; list one or more of q, k, v, o"),
    (CLIPLoRACLIP, "CLIPLORA", {"POSITION": "top"}, 'POSITION is "top"; use one of bottom'),
    (CLIPLoRACLIP, "CLIPLORA", {"ENCODER": "image"}, 'ENCODER is "image"; use one of text, vision, both'),
    (CLIPLoRACLIP, "CLIPLORA", {"RANK": 0}, "RANK is 0"),
    (PromptSRCCLIP, "PROMPTSRC", {"PROMPT_DEPTH_VISION": 13}, "TRAINER.PROMPTSRC: PROMPT_DEPTH_VISION is 13"),
])
def test_bad_config_gives_a_clear_error(tiny_clip_model, build, node, keys, message):
    with pytest.raises(ValueError, match=message):
        build(trainers.build_cfg(node, **keys), CLASSNAMES, tiny_clip_model)


@pytest.mark.parametrize("trainer, node, keys, message", [
    (PromptSRC, "PROMPTSRC", {"PROMPT_DEPTH_TEXT": 0}, "PROMPT_DEPTH_TEXT is 0; PromptSRC needs text prompts"),
    (PromptSRC, "PROMPTSRC", {"GPA_STD": 0}, "GPA_STD is 0;"),
    (CLIPLoRA, "CLIPLORA", {"N_ITERS": -1}, "N_ITERS is -1"),
    (KgCoOp, "KGCOOP", {"PREC": "bf16"}, 'TRAINER.KGCOOP.PREC is "bf16"'),
])
def test_trainers_refuse_bad_configs(trainer, node, keys, message):
    with pytest.raises(ValueError, match=message):
        object.__new__(trainer).check_cfg(trainers.build_cfg(node, **keys))


@pytest.mark.parametrize("shots, n_iters, iterations", [(16, 500, 8000), (4, 500, 2000), (-1, 500, 0), (16, 0, 0)])
def test_cliplora_iteration_budget_is_iterations_per_shot(shots, n_iters, iterations):
    """Released: N_ITERS x shots iterations; without a shot count (all images, e.g. an evaluation) epochs."""
    trainer = object.__new__(CLIPLoRA)
    trainer.cfg = trainers.build_cfg("CLIPLORA", N_ITERS=n_iters)
    trainer.cfg.DATASET.NUM_SHOTS = shots
    assert trainer.iterations == iterations and trainer.lr_per_batch == (iterations > 0)
