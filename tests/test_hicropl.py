"""HiCroPL: the released modules' parameter count, where the two knowledge flows go and what they
compute, the fused features and the loss against stock CLIP, the mapper-gradient option, config
errors, base-to-new through the scripts and an exact resume."""
import json
import math
import os
import subprocess
import types

import pytest
import torch
import torch.nn.functional as F

import trainers
from dassl.utils import trainable_state_dict
from datasets.descriptions import DescriptionsError
from datasets.fake import make_fake_dataset
from method_configs import descriptions_file
from train_runs import (Killed, base2new_through_scripts, restore_streams,  # noqa: F401  (fixture)
                        checkpoint_numel, descriptions_fact, run_in_process, train_argv)
from trainers.clip_prompting import tiny_clip, tokenize, vit_b16_shaped_clip
from trainers.hicropl import HiCroPL, HiCroPLCLIP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["red circle", "blue square", "green star"]  # the synthetic benchmark's: descriptions need no file
BASE2NEW = "vit_b16_c2_ep50_batch32_16ctx"


def hicropl_cfg(**keys):
    cfg = trainers.build_cfg("HICROPL", **{"N_CTX": 2, "PROMPT_DEPTH": 2, "CROSS_LAYER": 1, **keys})
    cfg.DATASET.NAME, cfg.MODEL.BACKBONE.NAME = "SyntheticShapes", "ViT-B/16"
    return cfg


@pytest.fixture(scope="module")
def small_clip():
    return tiny_clip(image_resolution=32, layers=2, patch_size=16)


def build(clip_model, seed=0, **keys):
    torch.manual_seed(seed)
    return HiCroPLCLIP(hicropl_cfg(**keys), CLASSES, clip_model)


def loss_of(model, images, labels, lambd=10.0):
    stub = types.SimpleNamespace(model=model, method_cfg=types.SimpleNamespace(LAMBD=lambd), device=images.device)
    return HiCroPL.compute_loss(stub, images, labels)


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32)


def count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# -- the released modules' size ------------------------------------------------------------------------
def mha(d):      # nn.MultiheadAttention(d, 8): in_proj (3d x d + 3d), out_proj (d x d + d)
    return 4 * d * d + 4 * d


def mapper(d, e):  # CrossPromptAttention(d, e): attn, linear_q (d x d + d), linear_k/v (e x d + d), ln_1/ln_2 (2d
    return mha(d) + (d * d + d) + 2 * (e * d + d) + 2 * 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)  # each), ffn


def pooling(d):  # AttentionPooling(d): attn, ln_1, ln_2
    return mha(d) + 2 * 2 * d


def released_count(n, depth, k, d_t=512, d_v=768):
    """What the released CrossModalPromptLearner trains (ViT-B/16: d_t 512, d_v 768): text and visual
    prompts in every layer (its `ctx` is cross_prompts_text[0], one tensor), the two mappers, k text LKPs
    and depth - k visual ones, one proxy token (1, d) per LKP; nothing of either CLIP encoder."""
    return (depth * n * (d_t + d_v) + mapper(d_v, d_t) + mapper(d_t, d_v)
            + k * (pooling(d_t) + d_t) + (depth - k) * (pooling(d_v) + d_v))


@pytest.fixture(scope="module")
def vit_b16():
    return vit_b16_shaped_clip()


@pytest.mark.parametrize("keys, expected", [
    # base-to-new / few-shot: 12 x 16 x 1280 + 8,466,432 + 4,202,496 + 6 x 1,053,184 + 6 x 2,366,208
    ({"N_CTX": 16, "PROMPT_DEPTH": 12, "CROSS_LAYER": 6}, 33_431_040),
    # cross-dataset: 6 x 2 x 1280 + 8,466,432 + 4,202,496 + 5 x 1,053,184 + 1 x 2,366,208
    ({"N_CTX": 2, "PROMPT_DEPTH": 6, "CROSS_LAYER": 5}, 20_316_416),
])
def test_trainable_parameters_on_vit_b16_are_the_released_modules(vit_b16, keys, expected):
    assert released_count(keys["N_CTX"], keys["PROMPT_DEPTH"], keys["CROSS_LAYER"]) == expected
    model = HiCroPLCLIP(hicropl_cfg(**keys), CLASSES, vit_b16)
    assert count(model) == count(model.prompt_learner) == expected
    state = trainable_state_dict(model.prompt_learner)  # what a checkpoint holds: no CLIP, no frozen features
    assert sum(v.numel() for v in state.values()) == expected
    assert {"cross_prompts_text.0", "text2visual_net.linear_k.weight", "attn_pooling_visual_nets.0.attn.in_proj_weight",
            "text_proxy_token.5" if keys["CROSS_LAYER"] == 6 else "visual_proxy_token.0"} <= set(state)


# -- the two knowledge flows -----------------------------------------------------------------------------
def by_hand_mapper(net, queries, proxies):
    """The released mapper written out: 8-head attention from its in_proj weights, LayerNorm'd projections."""
    def ln(x):
        return F.layer_norm(x, x.shape[-1:], net.ln_1.weight, net.ln_1.bias)
    q = queries @ net.linear_q.weight.t() + net.linear_q.bias
    k = ln(proxies @ net.linear_k.weight.t() + net.linear_k.bias)
    v = ln(proxies @ net.linear_v.weight.t() + net.linear_v.bias)
    w, b = net.attn.in_proj_weight.chunk(3), net.attn.in_proj_bias.chunk(3)
    heads = [t.reshape(t.shape[0], 8, -1).transpose(0, 1) for t in
             (ln(q) @ w[0].t() + b[0], k @ w[1].t() + b[1], v @ w[2].t() + b[2])]
    attn = torch.softmax(heads[0] @ heads[1].transpose(1, 2) / math.sqrt(heads[0].shape[-1]), dim=-1) @ heads[2]
    q = q + net.attn.out_proj(attn.transpose(0, 1).reshape(q.shape[0], -1))
    return q + net.ffn(F.layer_norm(q, q.shape[-1:], net.ln_2.weight, net.ln_2.bias))


def by_hand_proxy(net, token, prompts):
    t, p = net.ln_1(token), net.ln_1(prompts)
    return net.ln_2(token + net.attn(t, p, p, need_weights=False)[0])


def test_text_flows_to_vision_in_layers_1_to_k_and_back_after():
    torch.manual_seed(0)
    cfg = hicropl_cfg(N_CTX=3, PROMPT_DEPTH=4, CROSS_LAYER=2)
    learner = HiCroPLCLIP(cfg, CLASSES, tiny_clip(image_resolution=32, layers=4, patch_size=16)).prompt_learner
    T = [p.detach().clone() for p in learner.cross_prompts_text]
    V = [p.detach().clone() for p in learner.cross_prompts_visual]
    with torch.no_grad():
        text, visual = learner.mapped()
        # unchanged: the text prompts of layers 1..k and the visual prompts of layers k+1..D
        for l in (0, 1):
            assert torch.equal(text[l], T[l])
        for l in (2, 3):
            assert torch.equal(visual[l], V[l])
        # layers 1..k: all k visual prompt sets are the queries, one LKP proxy per text layer the keys
        proxies = torch.cat([by_hand_proxy(learner.attn_pooling_text_nets[l], learner.text_proxy_token[l], T[l])
                             for l in (0, 1)])
        expected = by_hand_mapper(learner.text2visual_net, torch.cat(V[:2]), proxies).view(2, 3, -1)
        assert torch.allclose(torch.stack(visual[:2]), expected, atol=1e-5)
        proxies = torch.cat([by_hand_proxy(learner.attn_pooling_visual_nets[l - 2], learner.visual_proxy_token[l - 2],
                                           V[l]) for l in (2, 3)])
        expected = by_hand_mapper(learner.visual2text_net, torch.cat(T[2:]), proxies).view(2, 3, -1)
        assert torch.allclose(torch.stack(text[2:]), expected, atol=1e-5)
        # multi-scale: a change of layer 1's text prompts reaches the visual prompts of layers 1 and 2, not 3
        learner.cross_prompts_text[0].add_(1.0)
        changed = learner.mapped()[1]
    assert not torch.allclose(changed[0], visual[0]) and not torch.allclose(changed[1], visual[1])
    assert torch.equal(changed[2], visual[2])


def test_prompts_enter_the_encoders_where_the_released_blocks_put_them(small_clip, images, monkeypatch):
    model = build(small_clip)
    with torch.no_grad():
        text, visual = model.prompt_learner.mapped()
    seen = {}
    for tower in ("text", "image"):
        blocks = getattr(model, f"{tower}_encoder").tower.blocks

        def spy(index, x, *args, run=blocks.run, tower=tower):
            seen.setdefault((tower, index, x.shape[1]), x.detach().clone())
            return run(index, x, *args)
        monkeypatch.setattr(blocks, "run", spy)
    with torch.no_grad():
        model(images)
    # the class prompts' pass (cut after EOT), not the descriptions' one; the prompted image pass, not the frozen one
    length, own = int(model.prompt_learner.classes.eot_index.max()) + 1, model.image_encoder.tokens(images).shape[1]
    # T_0 follows SOS at the input; T_1 (mapped from V_1, layer 2 > k = 1) replaces it before block 1
    embedded = model.text_encoder.positioned(model.prompt_learner.classes.assemble(text[0])[:, :length])
    assert torch.allclose(seen["text", 0, length][:, 1:3], embedded[:, 1:3], atol=1e-6)
    assert torch.allclose(seen["text", 1, length][:, 1:3], text[1].expand(3, -1, -1), atol=1e-6)
    # V_0 (mapped from T_0) appended after the patches, before ln_pre; V_1 replaces the last 2 before block 1
    first = model.image_encoder.tower.pre_norm(
        torch.cat([model.image_encoder.tokens(images), visual[0].expand(2, -1, -1)], dim=1))
    assert torch.allclose(seen["image", 0, own + 2][:, -2:], first[:, -2:], atol=1e-5)
    assert torch.allclose(seen["image", 1, own + 2][:, -2:], visual[1].expand(2, -1, -1), atol=1e-6)
    assert not torch.allclose(visual[0], model.prompt_learner.cross_prompts_visual[0])  # mapped, not the tensor


# -- features, loss, inference -------------------------------------------------------------------------
def test_fused_features_and_loss_against_stock_clip(small_clip, images):
    model = build(small_clip)
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        loss, logits = loss_of(model, images, labels, lambd=12.0)
        prompts = model.prompt_learner()
        text = F.normalize(model.encode_text(prompts), dim=-1)
        image = F.normalize(model.encode_image(images, prompts), dim=-1)
        ensemble = []  # each description normalised, averaged, normalised (stock CLIP's own encode_text)
        for sentences in model.descriptions.sentences:
            encoded = F.normalize(small_clip.encode_text(tokenize(sentences)), dim=-1)
            ensemble.append(F.normalize(encoded.mean(0), dim=-1))
        ensemble = torch.stack(ensemble)
        frozen = F.normalize(small_clip.encode_image(images), dim=-1)
    assert len(model.descriptions.sentences[0]) == 4 and "circle" in model.descriptions.sentences[0][0]
    fused_text, fused_image = F.normalize(text + ensemble, dim=-1), F.normalize(image + frozen, dim=-1)
    expected = small_clip.logit_scale.exp() * fused_image @ fused_text.t()
    assert torch.allclose(logits, expected, atol=1e-4)
    distances = (1 - (fused_text * ensemble).sum(-1).mean()) + (1 - (fused_image * frozen).sum(-1).mean())
    assert distances > 1e-3
    assert torch.allclose(loss, F.cross_entropy(expected, labels) + 12.0 * distances, atol=1e-4)
    assert torch.allclose(model.text_features(), fused_text, atol=1e-6)  # what evaluation caches


def test_evaluation_scores_with_a_cached_fused_text_state(small_clip, images):
    model = build(small_clip).eval()
    with torch.no_grad():
        state = model.text_state()
        assert torch.allclose(model(images, text_state=state), model(images), atol=1e-6)


@pytest.mark.parametrize("gradient", [True, False])
def test_mapper_gradient_option(small_clip, images, gradient):
    """Default: the mappers, LKPs and proxy tokens learn. MAPPER_GRADIENT False (released): each training
    forward writes the mapped prompts into the prompt tensors and no gradient reaches the mappers."""
    paper = build(small_clip)
    model = build(small_clip, MAPPER_GRADIENT=gradient)
    model.prompt_learner.train()
    learner = model.prompt_learner
    with torch.no_grad():
        mapped_text, mapped_visual = learner.mapped()
    loss, logits = loss_of(model, images, torch.tensor([0, 1]))
    loss.backward()
    with torch.no_grad():
        assert torch.allclose(logits, loss_of(paper, images, torch.tensor([0, 1]))[1], atol=1e-5)  # same function
    mapping = [learner.text2visual_net.linear_q.weight, learner.visual2text_net.ffn.c_proj.weight,
               learner.attn_pooling_text_nets[0].attn.in_proj_weight, learner.attn_pooling_visual_nets[0].ln_2.weight,
               learner.text_proxy_token[0], learner.visual_proxy_token[0]]
    prompts = list(learner.cross_prompts_text) + list(learner.cross_prompts_visual)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompts)
    if gradient:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mapping)
        assert not torch.equal(learner.cross_prompts_visual[0].detach(), mapped_visual[0])  # tensors left as they were
    else:
        assert all(p.grad is None for p in mapping)
        assert torch.equal(learner.cross_prompts_visual[0].detach(), mapped_visual[0])  # written in place
        assert torch.equal(learner.cross_prompts_text[1].detach(), mapped_text[1])
        learner.eval()  # evaluation maps the stored prompts once and writes nothing
        before = [p.detach().clone() for p in prompts]
        with torch.no_grad():
            model(images)
        assert all(torch.equal(a, p) for a, p in zip(before, prompts))


# -- config errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("keys, message", [
    ({"PROMPT_DEPTH": 3}, "PROMPT_DEPTH is 3, but this CLIP has 2 layers per encoder; use 2 to 2"),
    ({"PROMPT_DEPTH": 1, "CROSS_LAYER": 1}, "PROMPT_DEPTH is 1"),
    ({"CROSS_LAYER": 2}, "CROSS_LAYER is 2 with PROMPT_DEPTH 2; use 1 to 1"),
    ({"CROSS_LAYER": 0}, "CROSS_LAYER is 0"),
    ({"N_CTX": 0}, "N_CTX is 0"),
    ({"LAMBD": -1.0}, "LAMBD is -1.0"),
    ({"ADAM_EPS": 0.0}, "ADAM_EPS is 0.0"),
    ({"TEACHER_NAME": "ViT-L/14"}, r"TEACHER_NAME is ViT-L/14, but .*\(MODEL.BACKBONE.NAME ViT-B/16\)"),
])
def test_bad_settings_are_named(small_clip, keys, message):
    with pytest.raises(ValueError, match=f"TRAINER.HICROPL: {message}"):
        build(small_clip, **keys)


def test_missing_and_unusable_descriptions_are_named(small_clip, tmp_path):
    cfg = hicropl_cfg()
    cfg.DATASET.NAME = "EuroSAT"
    cfg.TRAINER.NAME = "HiCroPL"
    with pytest.raises(DescriptionsError, match="HiCroPL reads class descriptions, and DATASET.DESCRIPTIONS is not"):
        HiCroPLCLIP(cfg, CLASSES, small_clip)
    path = tmp_path / "long.json"
    path.write_text(json.dumps({name: ["word " * 80] for name in CLASSES}))
    cfg.DATASET.DESCRIPTIONS = str(path)
    model = HiCroPLCLIP(cfg, CLASSES, small_clip)
    with pytest.raises(ValueError, match="class description in .*long.json does not fit the text encoder"):
        model.description_features()


# -- end to end -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eurosat(tmp_path_factory):
    """A fake EuroSAT and a descriptions file for its classes."""
    root = tmp_path_factory.mktemp("data")
    written = make_fake_dataset("eurosat", str(root), num_classes=4, images_per_class=6)
    return str(root), descriptions_file(root, written.classnames)


def test_base2new_through_the_scripts(eurosat, tiny_clip_path, tmp_path):
    root, descriptions = eurosat
    run, log, test_log = base2new_through_scripts("hicropl", "eurosat", root, tiny_clip_path, tmp_path,
                                                  ["OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "2",
                                                   "DATASET.DESCRIPTIONS", descriptions])
    assert run.parts[-3:] == ("HiCroPL", BASE2NEW, "seed1") and "text -> vision in layers 1-6" in log
    facts = json.loads((run / "run_facts.json").read_text())
    assert facts["descriptions"] == descriptions_fact(descriptions)
    assert checkpoint_numel(run / "VLPromptLearner" / "model.pth.tar-1") == facts["trainable_params"]
    assert "(epoch = 1)" in test_log


@pytest.mark.parametrize("protocol, args, config", [
    ("base2new_train", ["imagenet", "1"], "vit_b16_c2_ep40_batch128_16ctx"),  # the released test script's
    ("base2new_test", ["dtd", "1"], BASE2NEW),
    ("few_shot", ["dtd", "1", "4"], "vit_b16_c2_ep50_batch32_16ctx_few_shot"),
    ("xd_test", ["imagenet_r", "1"], "vit_b16_c2_ep5_batch32_2ctx_cross_datasets"),
])
def test_scripts_pick_the_released_configs(protocol, args, config):
    done = subprocess.run(["bash", f"scripts/hicropl/{protocol}.sh", *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, DRY_RUN="1", OUTPUT="/nonexistent-output"))
    assert done.returncode == 0, done.stderr
    assert f"--config-file configs/trainers/HiCroPL/{config}.yaml " in done.stdout


def run_two_epochs(eurosat, clip_path, out, kill_after_epoch=None):
    """Two epochs on the base classes with batch 2: (trainer, epochs trained)."""
    root, descriptions = eurosat
    return run_in_process(train_argv(root, clip_path, out, "HiCroPL", BASE2NEW, dataset="eurosat", opts=[
        "OPTIM.MAX_EPOCH", "2", "DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", "base",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "2", "TEST.NO_TEST", "True", "DATASET.DESCRIPTIONS", descriptions]),
        kill_after_epoch)


def test_a_killed_run_resumes_to_the_same_prompts(eurosat, tiny_clip_path, tmp_path):
    trainer, epochs = run_two_epochs(eurosat, tiny_clip_path, tmp_path / "straight")
    assert epochs == [0, 1] and all(group["eps"] == 1e-3 for group in trainer.optim.param_groups)  # released eps
    with pytest.raises(Killed):
        run_two_epochs(eurosat, tiny_clip_path, tmp_path / "killed", kill_after_epoch=1)
    assert run_two_epochs(eurosat, tiny_clip_path, tmp_path / "killed")[1] == [1]  # epoch 2 only
    straight, resumed = (torch.load(tmp_path / run / "VLPromptLearner" / "model.pth.tar-2", weights_only=True)
                         for run in ("straight", "killed"))
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for name, tensor in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], tensor), name
