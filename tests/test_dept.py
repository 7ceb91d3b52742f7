"""DePT (TRAINER.DEPT): the CAT head's size on ViT-B/16 shapes, its loss and test-time mix against an
independent computation, the released base/new rule, the head's checkpoint (own LR, class rows,
exact resume), runs of CoOp, MaPLe and PromptSRC with DePT through train.py, and clear errors."""
import os
import subprocess
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import test_learning as learning
import train
import trainers
from dassl.utils import load_trainable_state_dict, trainable_state_dict
from dassl.utils.logger import close_logger
from datasets.fake import make_fake_dataset
from datasets.synthetic import shapes
from results import paper_numbers
from results.tables import harmonic_mean
from train_runs import error_of, restore_streams, train_argv  # noqa: F401  (fixture)
from trainers.clip_prompting import PromptTuningTrainer, set_text_chunk, tiny_clip, vit_b16_shaped_clip
from trainers.clip_prompting.dept import DePT, DePTError, check_dept_cfg, fuse, head_scores_these_classes
from trainers.cocoop import CoCoOpCLIP
from trainers.coop import CoOpCLIP
from trainers.dpt import DPTCLIP
from trainers.kgcoop import KgCoOp, KgCoOpCLIP
from trainers.vpt import VPTCLIP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSNAMES = ["dog", "sea_lion", "airliner", "tabby cat", "tree"]


def dept_cfg(node, subsample="base", dataset="Caltech101", dept=None, **keys):
    cfg = trainers.build_cfg(node, **keys)
    cfg.DATASET.SUBSAMPLE_CLASSES, cfg.DATASET.NAME = subsample, dataset
    cfg.TRAINER.DEPT.ENABLED = True
    for key, value in (dept or {}).items():
        setattr(cfg.TRAINER.DEPT, key, value)
    return cfg


def build(model_class, node, clip_model, classnames=CLASSNAMES, trainer=PromptTuningTrainer, dept=None, **keys):
    """A method's model with DePT beside it, and its trainer's compute_loss on that model."""
    cfg = dept_cfg(node, dept=dept, **keys)
    torch.manual_seed(0)
    model = model_class(cfg, classnames, clip_model)
    plugin = DePT(cfg, model, classnames)
    stub = types.SimpleNamespace(model=model, cfg=cfg, epoch=0, device=torch.device("cpu"),
                                 method_cfg=getattr(cfg.TRAINER, node), loss_logits=lambda logits: logits.float())
    return model, plugin, lambda images, labels: trainer.compute_loss(stub, images, labels)


def scramble(head):
    """Head tensors away from their identity start, so a wrong channel or row cannot pass unseen."""
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.3)


@pytest.fixture(scope="module")
def small_clip():
    return tiny_clip(image_resolution=32, layers=2, patch_size=16)


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(3)
    return torch.randn(3, 3, 32, 32, generator=generator), torch.tensor([4, 0, 2])


# -- the head's size and start ------------------------------------------------------------------
def test_cat_head_adds_the_released_parameter_count_on_vit_b16():
    # Released (trainers/elp_coop.py): FiLM(clip_dim) for the image and FiLM(clip_dim) for the text features,
    # each a scale and a bias of clip_dim = text_projection.size(1) = 512, and nn.Linear(512, base classes):
    # Caltech101's 50 base classes: 2 x (512 + 512) + 512 x 50 + 50 = 27,698;
    # ImageNet's 500 base classes:  2 x (512 + 512) + 512 x 500 + 500 = 258,548.
    classnames = [f"class {i}" for i in range(500)]
    model = CoOpCLIP(dept_cfg("COOP"), classnames[:50], vit_b16_shaped_clip())
    for base_classes, expected in ((50, 27_698), (500, 258_548)):
        plugin = DePT(dept_cfg("COOP"), model, classnames[:base_classes])
        assert sum(p.numel() for p in plugin.head.parameters() if p.requires_grad) == expected
    assert sum(p.numel() for p in model.prompt_learner.parameters()) + 27_698 == 35_890  # CoOp (16 x 512) + DePT


def test_cat_head_starts_as_released_identity_channels_and_a_default_linear(small_clip):
    model, plugin, _ = build(CoOpCLIP, "COOP", small_clip)
    head = plugin.head
    assert torch.equal(head.image_channels.scale, torch.ones(64)) and torch.equal(head.text_channels.shift,
                                                                                  torch.zeros(64))
    torch.manual_seed(5)
    reference = nn.Linear(64, len(CLASSNAMES))  # torch's default initialisation, as released
    torch.manual_seed(5)
    again = DePT(dept_cfg("COOP"), model, CLASSNAMES).head
    assert torch.equal(again.classifier.weight, reference.weight) and torch.equal(again.classifier.bias, reference.bias)


# -- training loss -------------------------------------------------------------------------------
def independent_cat_logits(head, text, image, labels):
    """The head by hand: scale and shift per channel, then the linear classifier, over [text rows; images]."""
    rows = torch.cat([text[labels] * head.text_channels.scale + head.text_channels.shift,
                      image * head.image_channels.scale + head.image_channels.shift])
    return rows @ head.classifier.weight.t() + head.classifier.bias


def test_coop_loss_moves_lambda_of_its_ce_to_the_cat_head_on_unnormalised_features(small_clip, batch):
    model, plugin, compute_loss = build(CoOpCLIP, "COOP", small_clip)
    scramble(plugin.head)
    images, labels = batch
    loss, logits = plugin.loss(compute_loss, lambda x: x.float(), images, labels)
    with torch.no_grad():
        prompts = model.prompts()
        text, image = model.encode_text(prompts).float(), model.encode_image(images, prompts).float()
        assert not torch.allclose(image.norm(dim=-1), torch.ones(3))  # the head reads features before normalising
        itm = model.logit_scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
        cat = independent_cat_logits(plugin.head, text, image, labels)
        expected = 0.3 * F.cross_entropy(itm, labels) + 0.7 * F.cross_entropy(cat, torch.cat([labels, labels]))
    assert torch.allclose(logits, itm, atol=1e-5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert model.prompt_learner.ctx.grad.abs().sum() > 0 and plugin.head.text_channels.scale.grad.abs().sum() > 0


def test_kgcoop_keeps_its_own_term_unweighted(small_clip, batch):
    model, plugin, compute_loss = build(KgCoOpCLIP, "KGCOOP", small_clip, trainer=KgCoOp, dept={"WEIGHT": 0.4})
    scramble(plugin.head)
    images, labels = batch
    loss, _ = plugin.loss(compute_loss, lambda x: x.float(), images, labels)
    with torch.no_grad():
        prompts = model.prompts()
        text, image = model.encode_text(prompts).float(), model.encode_image(images, prompts).float()
        normalised = F.normalize(text, dim=-1)
        itm = model.logit_scale * F.normalize(image, dim=-1) @ normalised.t()
        cat = independent_cat_logits(plugin.head, text, image, labels)
        distance = 1 - F.cosine_similarity(normalised, model.hand_crafted_text_features(), dim=-1).mean()
        expected = (0.6 * F.cross_entropy(itm, labels) + 0.4 * F.cross_entropy(cat, torch.cat([labels, labels]))
                    + 8.0 * distance)  # KgCoOp's W, not scaled by 1 - lambda (released elp_kgcoop.py)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("images", [3, 1])
def test_cocoop_head_reads_each_images_own_class_text(small_clip, images):
    model, plugin, _ = build(CoCoOpCLIP, "COCOOP", small_clip)
    x = torch.randn(images, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), plugin.tap.watch():
        image_features, text_state = model.features(x)
    image, text = plugin.tap.features(model.logits(image_features, text_state))
    assert torch.allclose(F.normalize(image.float(), dim=-1), image_features, atol=1e-6)
    per_image = text if text.dim() == 3 else text.unsqueeze(0)  # one image: the shared and per-image views agree
    assert torch.allclose(F.normalize(per_image.float(), dim=-1), text_state, atol=1e-6)


def test_chunked_text_pass_gives_the_same_dept_loss_and_gradients(small_clip, batch):
    classnames = [f"class {word} {i}" for i, word in enumerate(["dog", "sea lion", "airliner"] * 5)]
    results = []
    for chunk in (0, 4):  # 15 classes, 4 chunks
        model, plugin, compute_loss = build(CoOpCLIP, "COOP", small_clip, classnames=classnames)
        set_text_chunk(model, chunk)
        loss, _ = plugin.loss(compute_loss, lambda x: x.float(), *batch)
        loss.backward()
        results.append((loss.item(), model.prompt_learner.ctx.grad.clone(), plugin.head.classifier.weight.grad.clone()))
    (loss, ctx, head), (chunked, chunked_ctx, chunked_head) = results
    assert chunked == pytest.approx(loss, rel=1e-6)
    assert torch.allclose(ctx, chunked_ctx, atol=1e-6) and torch.allclose(head, chunked_head, atol=1e-6)


# -- test-time scores ------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", ["probabilities", "logits"])
def test_base_classes_are_scored_by_both_heads_lambda_to_the_cat_head(small_clip, batch, fusion):
    model, plugin, _ = build(CoOpCLIP, "COOP", small_clip, dept={"FUSION": fusion})
    scramble(plugin.head)
    images, _ = batch
    with torch.no_grad():
        cached = model.text_state()
        scores = plugin.inference(lambda x: model(x, text_state=cached), images)  # the cached evaluation path
        itm, cat = model(images), plugin.head(model.encode_image(images, None))
    if fusion == "logits":  # released
        assert torch.allclose(scores, 0.3 * itm + 0.7 * cat, atol=1e-5)
    else:  # the paper: a mix of the two heads' probabilities
        assert torch.allclose(scores.softmax(-1), 0.3 * itm.softmax(-1) + 0.7 * cat.softmax(-1), atol=1e-6)
    assert fuse(itm, cat, 0.0, fusion).argmax(-1).equal(itm.argmax(-1))


@pytest.mark.parametrize("subsample, dataset, applies", [
    ("base", "DescribableTextures", True), ("new", "DescribableTextures", False),
    ("all", "ImageNet", True), ("all", "ImageNetA", True), ("all", "ImageNetSketch", True),  # xd source, DG targets
    ("all", "Caltech101", False), ("new", "ImageNet", False),                                 # xd targets, new half
])
def test_released_rule_for_the_classes_the_head_scores(subsample, dataset, applies):
    cfg = dept_cfg("COOP", subsample=subsample, dataset=dataset)
    assert head_scores_these_classes(cfg) is applies
    plugin = DePT(cfg, types.SimpleNamespace(embed_dim=8), ["a", "b"])
    assert (plugin.head is not None) is applies
    if not applies:
        with pytest.raises(DePTError, match="trains the CAT head on base classes"):
            plugin.check_trainable()


def test_head_checkpoint_loads_onto_a_subset_of_its_classes_by_name_and_refuses_others():
    trained = DePT(dept_cfg("COOP"), types.SimpleNamespace(embed_dim=8), ["a", "b", "c", "d"]).head
    state = trainable_state_dict(trained)
    subset = DePT(dept_cfg("COOP"), types.SimpleNamespace(embed_dim=8), ["c", "a"]).head  # as ImageNet-A / -R
    load_trainable_state_dict(subset, state)
    assert torch.equal(subset.classifier.weight, trained.classifier.weight[[2, 0]])
    assert torch.equal(subset.classifier.bias, trained.classifier.bias[[2, 0]])
    other = DePT(dept_cfg("COOP"), types.SimpleNamespace(embed_dim=8), ["c", "zebra"]).head
    with pytest.raises(DePTError, match="1 of the 2 classes to score here are not among them"):
        load_trainable_state_dict(other, state)


# -- where it cannot apply, and bad settings --------------------------------------------------------
@pytest.mark.parametrize("keys, message", [
    ({"WEIGHT": 1.5}, "WEIGHT is 1.5; it is lambda"),
    ({"HEAD_LR_MULT": 0.0}, "HEAD_LR_MULT is 0.0; the head's learning rate"),
    ({"FUSION": "sum"}, 'FUSION is "sum"; use probabilities'),
])
def test_bad_settings_are_named(keys, message):
    with pytest.raises(ValueError, match=message):
        check_dept_cfg(dept_cfg("COOP", dept=keys).TRAINER.DEPT)


def test_methods_dept_cannot_read_are_refused(small_clip, batch):
    _, vpt, compute_loss = build(VPTCLIP, "VPT", small_clip, PROMPT_DEPTH_VISION=1)
    with pytest.raises(DePTError, match="computed no text features while training"):  # fixed, normalised text
        vpt.loss(compute_loss, lambda x: x.float(), *batch)
    dpt_model, dpt, _ = build(DPTCLIP, "DPT", small_clip, N_CTX=2, VPT_N_CTX=1, CPN=2, BOTTOMLIMIT=2)
    with pytest.raises(DePTError, match="ran the image encoder 2 times"):  # a frozen pass to pick classes first
        dpt.inference(dpt_model, batch[0])


# -- end to end: train.py with the tiny CLIP ----------------------------------------------------------
TWO_TEMPLATES = ("a photo of a {}.", "a sketch of the {}.")  # a cheaper PromptSRC teacher
RUN = ["DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", "base", "DATALOADER.TRAIN_X.BATCH_SIZE", "2"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_fake_dataset("eurosat", str(root), num_classes=4, images_per_class=4)
    return str(root)


class Killed(Exception):
    pass


def run_dept(data_root, clip_path, out, trainer, config, opts=(), kill_after_epoch=None, eval_only=None):
    """train.py's own steps in-process; returns the trainer."""
    flags = ["--eval-only", "--model-dir", str(eval_only), "--load-epoch", "2"] if eval_only else []
    args = train.parse_args(train_argv(data_root, clip_path, out, trainer, config, dataset="eurosat", flags=flags,
                                       opts=[*RUN, *opts]))
    trainer = train.prepare(args)
    if kill_after_epoch is not None:
        after_epoch = trainer.after_epoch

        def killed():
            after_epoch()
            if trainer.epoch + 1 == kill_after_epoch:
                raise Killed  # as a killed job, right after the checkpoint of that epoch
        trainer.after_epoch = killed
    try:
        train.run(trainer, args)
    finally:
        close_logger()
    return trainer


def head_state(out, epoch):
    return torch.load(os.path.join(out, "dept_head", f"model.pth.tar-{epoch}"), weights_only=True)


@pytest.fixture(scope="module")
def coop_run(data_root, tiny_clip_path, tmp_path_factory):
    """CoOp + DePT with the released DePT config, 2 epochs without a stop."""
    out = tmp_path_factory.mktemp("coop_dept")
    trainer = run_dept(data_root, tiny_clip_path, out, "CoOp", "vit_b16_ep10_bs4_lr35_dept", ["OPTIM.MAX_EPOCH", "2"])
    return out, trainer


def test_coop_with_dept_trains_its_head_at_its_own_learning_rate(coop_run):
    out, trainer = coop_run
    log = (out / "log.txt").read_text()
    assert "DePT: CAT head on the 2 classes of DATASET.SUBSAMPLE_CLASSES base on EuroSAT, lambda 0.7" in log
    assert trainer.get_model_names() == ["prompt_learner", "dept_head"]
    assert trainer._optims["dept_head"].param_groups[0]["initial_lr"] == pytest.approx(0.0035 * 6.5)
    assert trainer._optims["prompt_learner"].param_groups[0]["initial_lr"] == pytest.approx(0.0035)
    saved = head_state(out, 2)
    assert saved["state_dict"]["classifier.weight"].shape == (2, 64)
    assert not torch.equal(saved["state_dict"]["image_channels.scale"], torch.ones(64))  # trained
    facts = trainer.run_facts()
    assert facts["trainable_params"] == 16 * 64 + (4 * 64 + 2 * 64 + 2)  # CoOp's 16 words + the head on 2 classes


def test_new_classes_load_and_use_the_prompts_alone_base_classes_mix_in_the_head(coop_run, data_root, tiny_clip_path,
                                                                                 tmp_path):
    out, _ = coop_run
    new = run_dept(data_root, tiny_clip_path, tmp_path / "new", "CoOp", "vit_b16_ep10_bs4_lr35_dept",
                   ["DATASET.SUBSAMPLE_CLASSES", "new"], eval_only=out)
    assert new.get_model_names() == ["prompt_learner"] and new.dept.head is None
    base = run_dept(data_root, tiny_clip_path, tmp_path / "base", "CoOp", "vit_b16_ep10_bs4_lr35_dept",
                    eval_only=out)
    assert base.get_model_names() == ["prompt_learner", "dept_head"]
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        mixed, own = base.model_inference(images), base.prompt_scores(images)
        assert torch.allclose(new.model_inference(images), new.prompt_scores(images))
    assert not torch.allclose(mixed, own)
    assert torch.equal(base.dept.head.classifier.weight, head_state(out, 2)["state_dict"]["classifier.weight"])


def test_a_killed_coop_dept_run_resumes_bitwise(coop_run, data_root, tiny_clip_path, tmp_path):
    straight, _ = coop_run
    with pytest.raises(Killed):
        run_dept(data_root, tiny_clip_path, tmp_path, "CoOp", "vit_b16_ep10_bs4_lr35_dept", ["OPTIM.MAX_EPOCH", "2"],
                 kill_after_epoch=1)
    resumed_run = run_dept(data_root, tiny_clip_path, tmp_path, "CoOp", "vit_b16_ep10_bs4_lr35_dept",
                           ["OPTIM.MAX_EPOCH", "2"])
    assert resumed_run.start_epoch == 1  # epoch 1 came from the checkpoint
    for folder in ("prompt_learner", "dept_head"):
        resumed = torch.load(tmp_path / folder / "model.pth.tar-2", weights_only=True)
        expected = torch.load(straight / folder / "model.pth.tar-2", weights_only=True)
        for name, tensor in expected["state_dict"].items():
            assert torch.equal(resumed["state_dict"][name], tensor), f"{folder}/{name}"


@pytest.mark.parametrize("trainer, config, precision", [
    ("MaPLe", "vit_b16_c2_ep10_batch4_2ctx_dept", "fp16"),  # the released precision: fp16 CLIP, fp32 head, scaler
    ("PromptSRC", "vit_b16_c2_ep20_batch4_4+4ctx_dept", "fp32"),
])
def test_maple_and_promptsrc_train_with_dept(data_root, tiny_clip_path, tmp_path, monkeypatch, trainer, config,
                                             precision):
    monkeypatch.setattr("trainers.promptsrc.TEACHER_TEMPLATES", TWO_TEMPLATES)
    monkeypatch.setenv("GPU_PRECISION_ON_CPU", "1")  # the GPU precision branches, run on the CPU
    depths = ["TRAINER.MAPLE.PROMPT_DEPTH", "2", "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2",
              "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2", f"TRAINER.{trainer.upper()}.PREC", precision]
    run = run_dept(data_root, tiny_clip_path, tmp_path, trainer, config, ["OPTIM.MAX_EPOCH", "1", *depths])
    log = (tmp_path / "log.txt").read_text()
    assert "DePT: CAT head on the 2 classes" in log and "* accuracy:" in log and f"Precision: {precision}" in log
    assert (run.scaler is not None) == (precision == "fp16")
    assert run.get_model_names()[-1] == "dept_head"
    assert not torch.equal(head_state(tmp_path, 1)["state_dict"]["text_channels.shift"], torch.zeros(64))


def test_coop_with_dept_beats_zero_shot_on_held_out_base_classes(tmp_path_factory):
    """test_learning's check for CoOp + DePT (its LEARNING table is keyed by trainer name): one epoch with the
    pretrained mini-CLIP on the first 32 classes of the synthetic benchmark (16 base classes, its first four
    colours) lifts the held-out base accuracy above zero-shot CLIP's."""
    root = tmp_path_factory.mktemp("synthetic")
    shapes.write_benchmark(str(root / shapes.FOLDER), classes=shapes.benchmark_classes()[:32], sizes=learning.SIZES)
    _, zs_held_out = learning.zero_shot(str(root), root / "zsclip", "base")
    trainer, args = learning.prepare(str(root), root / "dept", "CoOp", "vit_b16_ctxv1", [
        "OPTIM.MAX_EPOCH", "1", "OPTIM.LR", "0.01", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
        "TRAINER.DEPT.ENABLED", "True"])
    try:
        train.run(trainer, args)
        held_out = trainer.test()
    finally:
        train.release_lock(trainer)
        close_logger()
    assert held_out > zs_held_out + 10, f"CoOp + DePT: base test accuracy {held_out:.1f}%, zero-shot {zs_held_out:.1f}%"


def test_paper_rows_show_as_method_plus_dept_and_give_their_printed_averages():
    rows = {row.method: row for row in paper_numbers.BASE2NEW if row.source == paper_numbers.DEPT_README}
    assert sorted(rows) == ["CoCoOp+DePT", "CoOp+DePT", "KgCoOp+DePT", "MaPLe+DePT", "PromptSRC+DePT"]
    for row in rows.values():  # within 0.01: the README's PromptSRC+DePT UCF101 base is one digit off its HM
        assert abs(sum(row.base.values()) / 11 - row.average_base) <= 0.0101, row.method
        assert abs(sum(row.new.values()) / 11 - row.average_new) <= 0.0101, row.method
    source = rows["PromptSRC+DePT"]
    assert (source.average_base, source.average_new) == (85.19, 76.17)
    assert round(harmonic_mean(source.average_base, source.average_new), 2) == 80.43


def test_zero_shot_clip_refuses_dept(data_root, tiny_clip_path, tmp_path, capsys):
    argv = train_argv(data_root, tiny_clip_path, tmp_path, "ZeroshotCLIP", "vit_b16", dataset="eurosat",
                      flags=["--eval-only"], opts=["TRAINER.DEPT.ENABLED", "True"])
    assert "builds no prompt-tuned model for DePT's head to join" in error_of(capsys, argv)


def test_scripts_give_dept_runs_folders_of_their_own():
    env = dict(os.environ, DRY_RUN="1", OUTPUT="/nonexistent-output")
    folders = {}
    for opts in ([], ["TRAINER.DEPT.ENABLED", "True"]):
        done = subprocess.run(["bash", "scripts/promptsrc/base2new_test.sh", "dtd", "1", *opts], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        folders[bool(opts)] = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert folders[True]["output_dir"] == folders[False]["output_dir"].replace("4+4ctx/", "4+4ctx_dept/")
    assert folders[True]["model_dir"].endswith("PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx_dept/seed1")
    assert "TRAINER.DEPT.ENABLED True" in folders[True]["command"]
