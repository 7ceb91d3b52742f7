"""The backbone interface: each family equals its library, every method runs on every family.

Small random models built by each library (OpenCLIP native towers, timm SigLIP / EVA-02 / PE-Core
towers, a transformers CLIP mapped onto OpenAI's layout) and written in each library's layout.
"""
import importlib
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import trainers
from backbones import as_backbone, load_backbone
from backbones.tiny_models import BACKBONE_NAMES, build_hf_clip, build_open_clip, current_umask, write_tiny_model
from method_configs import descriptions_file, trainer_stub
from trainers.clip_prompting import EncoderLoRA, ImageEncoder, TextEncoder, deep_prompt_hook, set_fast_paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPEN_CLIP_FAMILIES = ("openclip", "siglip", "eva", "pe")
CLASSNAMES = ["dog", "sea_lion", "airliner"]


@pytest.fixture(scope="module")
def library_models():
    """family -> (the library's own model, its backbone)."""
    models = {family: build_open_clip(family) for family in OPEN_CLIP_FAMILIES}
    return {family: (model, as_backbone(model)) for family, model in models.items()}


@pytest.fixture(scope="module")
def family_files(tmp_path_factory):
    """family -> (MODEL.BACKBONE.NAME, PATH) of a tiny model written in the family's own layout."""
    root = tmp_path_factory.mktemp("families")
    files = {}
    for family in ("openai",) + OPEN_CLIP_FAMILIES + ("hf",):
        path = str(root / (family + (".pt" if family == "openai" else "")))
        files[family] = (write_tiny_model(path, family), path)
    return files


def both_paths(encoders, fn):
    for encoder in encoders:
        encoder.fast = False
    reference = fn()
    for encoder in encoders:
        encoder.fast = True
    return fn(), reference


@pytest.mark.parametrize("family", OPEN_CLIP_FAMILIES)
def test_features_equal_the_librarys_own_encoders(library_models, family):
    model, backbone = library_models[family]
    text, image = TextEncoder(backbone), ImageEncoder(backbone)
    ids = backbone.tokenizer(["a photo of a dog.", "x " * 20, "a sea lion"])
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        fast, reference = both_paths([text], lambda: text.encode_ids(ids))
        stock = model.encode_text(ids)
        assert stock.shape == (3, 64)
        assert (fast - stock).abs().max() < 1e-5 and (reference - stock).abs().max() < 1e-5
        fast, reference = both_paths([image], lambda: image(images))
        stock = model.encode_image(images)
        assert (fast - stock).abs().max() < 1e-5 and (reference - stock).abs().max() < 1e-5


def test_family_traits_are_read_from_the_model(library_models):
    siglip = library_models["siglip"][1]
    assert not siglip.text.causal and siglip.tokenizer.context_length == 64
    assert siglip.logit_bias is not None and float(siglip.logit_bias) == -10
    ids = siglip.tokenizer(["a dog"])
    assert int(siglip.text.pool_index(ids)) == 63  # pooled on the last token, not on EOT
    assert ImageEncoder(siglip).prompt_start(4) == -4  # no CLS: prompts after the patches
    eva = library_models["eva"][1]
    assert eva.text.causal and eva.logit_bias is None
    assert ImageEncoder(eva).prompt_start(4) == 1  # rotary tower: prompts right after CLS
    assert library_models["pe"][1].tokenizer.context_length == 32
    native = library_models["openclip"][1]
    block = native.vision.blocks.blocks[0]
    assert hasattr(block, "ls_1") and not torch.equal(block.ls_1.gamma, torch.ones_like(block.ls_1.gamma))


@pytest.mark.parametrize("family", OPEN_CLIP_FAMILIES)
def test_fast_path_equals_the_library_blocks_with_prompts_and_lora(library_models, family):
    _, backbone = library_models[family]
    text, image = TextEncoder(backbone), ImageEncoder(backbone)
    torch.manual_seed(0)
    n, width = 4, image.width
    shallow, deep = torch.randn(n, width), torch.randn(11, n, width)
    lora = EncoderLoRA(width, range(12), ["q", "k", "v", "o"], rank=2, scale=0.5).eval()
    text_lora = EncoderLoRA(text.width, range(12), ["q", "v"], rank=2, scale=0.5).eval()
    for update in list(lora.modules()) + list(text_lora.modules()):
        if hasattr(update, "B"):
            torch.nn.init.normal_(update.B, std=0.1)
    images = torch.randn(2, 3, 224, 224)
    ids = backbone.tokenizer(["a photo of a dog.", "an airliner"])
    hook = deep_prompt_hook(deep, image.prompt_start(n))
    with torch.no_grad():
        fast, reference = both_paths([image], lambda: image(images, shallow, hook=hook, lora=lora))
        plain = image(images)
        scale = plain.abs().max()  # a random PE-Core tower's features are small
        assert (fast - reference).abs().max() < 1e-5 * max(1.0, scale)
        assert (fast - plain).abs().max() > 1e-3 * scale  # prompts and LoRA act
        fast, reference = both_paths([text], lambda: text.encode_ids(ids, lora=text_lora))
        assert (fast - reference).abs().max() < 1e-5


def test_a_transformers_clip_runs_exactly_on_the_openai_layout(family_files):
    hf = build_hf_clip()
    backbone = load_backbone(*family_files["hf"])
    assert backbone.family == "hf"
    ids = backbone.tokenizer(["a photo of a dog.", "x " * 20])
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        text = hf.get_text_features(input_ids=ids)
        image = hf.get_image_features(pixel_values=images)
        text, image = (t if torch.is_tensor(t) else t.pooler_output for t in (text, image))
        assert (TextEncoder(backbone).encode_ids(ids) - text).abs().max() < 1e-5
        assert (ImageEncoder(backbone)(images) - image).abs().max() < 1e-5


@pytest.mark.parametrize("family", OPEN_CLIP_FAMILIES)
def test_each_family_loads_from_its_own_files(family_files, library_models, family):
    name, path = family_files[family]
    backbone = load_backbone(name, path)
    model, _ = library_models[family]  # the same seed: the same weights
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(ImageEncoder(backbone)(images), model.encode_image(images), atol=1e-6)
    expected_mean = 0.5 if family in ("siglip", "pe") else 0.48145466
    assert abs(backbone.preprocessing.mean[0] - expected_mean) < 1e-6


def test_make_tiny_clip_prints_the_backbone_name_last(tmp_path):
    out = tmp_path / "eva"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_tiny_clip.py"), str(out),
                             "--family", "eva"], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == f"MODEL.BACKBONE.NAME {BACKBONE_NAMES['eva']}"
    assert sorted(os.listdir(out)) == ["open_clip_config.json", "open_clip_model.safetensors"]
    assert oct(os.stat(out / "open_clip_model.safetensors").st_mode & 0o777) == oct(0o666 & ~current_umask())
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o777 & ~current_umask())


# -- every method on every family ------------------------------------------------------------
METHODS = [  # (module, model class, trainer class)
    ("coop", "CoOpCLIP", "CoOp"), ("cocoop", "CoCoOpCLIP", "CoCoOp"), ("mudpt", "MuDPTCLIP", "MuDPT"),
    ("vpt", "VPTCLIP", "VPT"), ("ivlp", "IVLPCLIP", "IVLP"), ("maple", "MaPLeCLIP", "MaPLe"),
    ("dcp", "DCPCLIP", "DCP"), ("dpt", "DPTCLIP", "DPT"), ("kgcoop", "KgCoOpCLIP", "KgCoOp"),
    ("promptsrc", "PromptSRCCLIP", "PromptSRC"), ("mma", "MMACLIP", "MMA"), ("cliplora", "CLIPLoRACLIP", "CLIPLoRA"),
    ("mmrl", "MMRLCLIP", "MMRL"), ("hicropl", "HiCroPLCLIP", "HiCroPL"), ("lweib", "LwEIBCLIP", "LwEIB"),
    ("coprompt", "CoPromptCLIP", "CoPrompt"), ("tcp", "TCPCLIP", "TCP"),
]


def one_step(module, model_class, trainer_class, backbone, descriptions):
    """Build the method on ``backbone``, take one training step with its trainer's own loss, evaluate."""
    torch.manual_seed(0)
    module = importlib.import_module(f"trainers.{module}")
    trainer = getattr(module, trainer_class)
    cfg = trainers.build_cfg()
    cfg.TRAINER.VPT.PROMPT_DEPTH_VISION = 9
    cfg.DATASET.DESCRIPTIONS = descriptions
    model = getattr(module, model_class)(cfg, CLASSNAMES, backbone)
    images, labels = torch.randn(2, 3, 224, 224), torch.tensor([0, 2])
    stub = trainer_stub(trainer, model, cfg)
    model.train()
    loss, _ = trainer.compute_loss(stub, images, labels)
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and torch.isfinite(p.grad).all()}
    assert any(p.grad.abs().sum() > 0 for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        logits = model(images)
    return loss, trainable, with_grad, logits, model


@pytest.mark.parametrize("family", ("openai",) + OPEN_CLIP_FAMILIES + ("hf",))
def test_every_method_trains_a_step_on_every_family(family_files, family, tmp_path):
    backbone = load_backbone(*family_files[family])
    descriptions = descriptions_file(tmp_path, CLASSNAMES)
    for module, model_class, trainer_class in METHODS:
        if trainer_class == "DCP" and not backbone.text.causal:
            with pytest.raises(ValueError, match="exact only in a causal text tower"):
                one_step(module, model_class, trainer_class, backbone, descriptions)
            continue
        loss, trainable, with_grad, logits, model = one_step(module, model_class, trainer_class, backbone,
                                                             descriptions)
        assert torch.isfinite(loss), (family, trainer_class)
        # gradients reach exactly the method's tensors (LoRA's A gets zeros while B starts at 0)
        assert with_grad == trainable, (family, trainer_class, sorted(trainable ^ with_grad)[:3])
        assert logits.shape == (2, 3) and torch.isfinite(logits).all()
        assert not any(p.requires_grad for p in backbone.model.parameters())


def test_a_deep_visual_method_on_a_convnext_tower_is_refused():
    import open_clip
    model = open_clip.CustomTextCLIP(embed_dim=64, vision_cfg={"timm_model_name": "test_convnext", "image_size": 64,
                                                               "timm_pool": "avg", "timm_proj": "linear"},
                                     text_cfg={"context_length": 77, "width": 64, "heads": 1, "layers": 2})
    backbone = as_backbone(model.eval())
    image = ImageEncoder(backbone)
    assert not image.is_vit and image(torch.randn(1, 3, 64, 64)).shape == (1, 64)
    from trainers.maple import MaPLeCLIP
    with pytest.raises(ValueError, match="ResNet CLIP backbones support text-side methods only"):
        MaPLeCLIP(trainers.build_cfg("MAPLE", PROMPT_DEPTH=2), CLASSNAMES, backbone)
    from trainers.coop import CoOpCLIP
    assert CoOpCLIP(trainers.build_cfg(), CLASSNAMES, backbone)(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_prompt_depth_beyond_a_towers_layers_is_a_clear_error(library_models):
    from trainers.mudpt import MuDPTCLIP
    with pytest.raises(ValueError, match="DEEP_PROMPT_DEPTH is 13, but this CLIP has 12 layers"):
        MuDPTCLIP(trainers.build_cfg("MUDPT", DEEP_PROMPT_DEPTH=13), CLASSNAMES, library_models["eva"][1])


# -- bad input ---------------------------------------------------------------------------------
def test_missing_or_wrong_weights_say_what_to_do(tmp_path, family_files):
    from backbones.openai import ClipWeightsError, ClipWeightsNotFound
    with pytest.raises(ClipWeightsNotFound, match="no weights are named: set MODEL.BACKBONE.PATH"):
        load_backbone("openclip:ViT-B-16")
    with pytest.raises(ClipWeightsNotFound, match="not in the local cache and nothing is downloaded"):
        load_backbone("openclip:ViT-B-16@laion2b_s34b_b88k")
    with pytest.raises(ClipWeightsNotFound, match="has no open_clip_config.json"):
        load_backbone("openclip:ViT-B-16", str(tmp_path))
    with pytest.raises(ClipWeightsError, match='OpenCLIP knows no model "NoSuchNet"'):
        load_backbone("openclip:NoSuchNet", family_files["openai"][1])
    (tmp_path / "config.json").write_text('{"model_type": "siglip"}')
    with pytest.raises(ClipWeightsError, match='describes a "siglip" model'):
        load_backbone("hf:x", str(tmp_path))


def test_a_siglip_tokenizer_that_is_not_local_stops_with_a_message():
    from backbones.open_clip_family import ClipWeightsNotFound, hf_tokenizer
    with pytest.raises(ClipWeightsNotFound, match=r"tokenizer of this backbone \(\"timm/ViT-B-16-SigLIP\"\) is not "
                                                  r"available locally"):
        hf_tokenizer("timm/ViT-B-16-SigLIP", 64)


# -- preprocessing from the backbone -----------------------------------------------------------
def test_stock_clip_preprocessing_gives_way_to_the_backbones(capsys):
    from backbones import Preprocessing
    from backbones.preprocessing import adopt_preprocessing
    cfg = trainers.build_cfg()
    cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258,
                                                                                      0.27577711]
    cfg.INPUT.INTERPOLATION = "bilinear"  # set by the user: kept
    siglip = Preprocessing(size=384, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic")
    adopt_preprocessing(cfg, siglip)
    assert tuple(cfg.INPUT.SIZE) == (384, 384) and list(cfg.INPUT.PIXEL_MEAN) == [0.5] * 3
    assert cfg.INPUT.INTERPOLATION == "bilinear"
    out = capsys.readouterr().out
    assert "INPUT.PIXEL_MEAN (0.481455, 0.457827, 0.408211) (the config's CLIP default) is replaced" in out
    assert "INPUT.INTERPOLATION is bilinear as set, though the backbone was trained with bicubic" in out
    cfg.INPUT.SIZE = (300, 300)
    with pytest.raises(ValueError, match=r"INPUT.SIZE is \(300, 300\) but the CLIP backbone takes 384x384"):
        adopt_preprocessing(cfg, siglip)


# -- widths and depths read from the model -------------------------------------------------------
def block_params(width):
    """An Injection block's parameters: attention 4w^2 + 4w, MLP 8w^2 + 5w, two LayerNorms 4w."""
    return 12 * width * width + 13 * width


def test_parameter_counts_adapt_to_vit_l14_widths():
    """ViT-L/14: text width 768, vision width 1024, 24 vision layers. The released MaPLe hard-codes a
    768-wide vision side (right for ViT-B/16 only); here the couplings are 768 -> 1024."""
    from trainers.clip_prompting.loading import build_clip
    from trainers.maple import MaPLeCLIP
    from trainers.mudpt import MuDPTCLIP
    with torch.device("meta"):  # shapes only; the prompt learners are built on the CPU
        vit_l14 = build_clip(768, 224, 24, 1024, 14, transformer_width=768, transformer_layers=12)
    maple = MaPLeCLIP(trainers.build_cfg(), CLASSNAMES, vit_l14).prompt_learner
    assert maple.proj.weight.shape == (1024, 768)
    # T_0..T_8 (2 x 768) and nine 768 -> 1024 couplings
    assert sum(p.numel() for p in maple.parameters()) == 9 * 2 * 768 + 9 * (768 * 1024 + 1024) == 7_100_928
    mudpt = MuDPTCLIP(trainers.build_cfg(), CLASSNAMES, vit_l14).prompt_learner
    expected = (12 * 4 * (768 + 1024) + block_params(768) + 768 * 1024 + 1024
                + block_params(1024) + 1024 * 768 + 768)
    assert sum(p.numel() for p in mudpt.parameters()) == expected == 21_344_768


# -- a whole run on an OpenCLIP backbone ----------------------------------------------------------
def test_a_full_run_on_a_siglip_backbone_records_it(tmp_path, family_files):
    import json

    import yaml

    import train
    from dassl.utils.logger import close_logger
    from datasets.fake import make_fake_dataset
    from results.collect import collect_runs
    from results.provenance import provenance_rows
    name, path = family_files["siglip"]
    data = str(tmp_path / "data")
    make_fake_dataset("caltech101", data, num_classes=4, images_per_class=8)
    out = tmp_path / "output/caltech101/MuDPT/vit_b16_bz4_ep10_nctx4_depth12_2shots/seed1"
    train.main(["--root", data, "--seed", "1", "--trainer", "MuDPT", "--dataset-config-file",
                "configs/datasets/caltech101.yaml", "--config-file",
                "configs/trainers/MuDPT/vit_b16_bz4_ep10_nctx4_depth12.yaml", "--output-dir", str(out),
                "MODEL.BACKBONE.NAME", name, "MODEL.BACKBONE.PATH", path, "DATALOADER.NUM_WORKERS", "0",
                "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "1"])
    close_logger()
    facts = json.loads((out / "run_facts.json").read_text())
    assert (facts["backbone"], facts["family"]) == ("openclip:tiny-siglip", "openclip")
    assert facts["architecture"] == "tiny-siglip (timm VisionTransformer)"
    assert facts["trainable_params"] > 0 and facts["n_ctx"] == 4
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["INPUT"]["PIXEL_MEAN"] == [0.5, 0.5, 0.5]  # SigLIP's, not the config's CLIP values
    log = (out / "log.txt").read_text()
    assert "INPUT.PIXEL_MEAN (0.481455, 0.457827, 0.408211) (the config's CLIP default) is replaced" in log
    assert "accuracy:" in log
    (row,) = provenance_rows(collect_runs(str(tmp_path / "output")))
    assert row[4] == "tiny-siglip (timm VisionTransformer)" and row[5] == f"{facts['trainable_params']:,}"


NATIVE_VARIANTS = {  # OpenCLIP's native options beyond the tiny openclip family's
    "avg pool, final LN after pool, text Linear projection, bidirectional text": (
        {"pool_type": "avg", "final_ln_after_pool": True},
        {"proj_bias": True, "no_causal_mask": True, "pool_type": "last"}),
    "eos pooling, no ln_pre": ({"no_ln_pre": True}, {"pool_type": "eos", "eos_id": 49407}),
}


@pytest.mark.parametrize("variant", NATIVE_VARIANTS)
def test_native_openclip_options_equal_the_library(variant):
    import open_clip
    vision, text = NATIVE_VARIANTS[variant]
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=64, vision_cfg=dict({"image_size": 64, "layers": 2, "width": 64,
                                                          "patch_size": 16}, **vision),
                           text_cfg=dict({"context_length": 77, "width": 64, "heads": 1, "layers": 2}, **text),
                           ).eval() if "eos_id" not in text else open_clip.CustomTextCLIP(
        embed_dim=64, vision_cfg=dict({"image_size": 64, "layers": 2, "width": 64, "patch_size": 16}, **vision),
        text_cfg=dict({"context_length": 77, "width": 64, "heads": 1, "layers": 2}, **text)).eval()
    backbone = as_backbone(model)
    ids = backbone.tokenizer(["a photo of a dog.", "x " * 10])
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for encoder, inputs, stock in ((TextEncoder(backbone), ids, model.encode_text(ids)),
                                       (ImageEncoder(backbone), images, model.encode_image(images))):
            run = (lambda e=encoder: e.encode_ids(ids)) if isinstance(encoder, TextEncoder) else \
                (lambda e=encoder: e(images))
            fast, reference = both_paths([encoder], run)
            assert (fast - stock).abs().max() < 1e-5 and (reference - stock).abs().max() < 1e-5


@pytest.mark.parametrize("name, text, vision, placement", [
    ("ViT-B-32", (512, 12), (768, 12), "append"), ("ViT-L-14-quickgelu", (768, 12), (1024, 24), "append"),
    ("ViT-H-14", (1024, 24), (1280, 32), "append"), ("ViT-B-16-SigLIP", (768, 12), (768, 12), "append"),
    ("EVA02-B-16", (512, 12), (768, 12), "prefix"), ("PE-Core-B-16", (1024, 24), (768, 12), "prefix"),
])
def test_released_openclip_shapes_are_read_from_the_model(name, text, vision, placement):
    """The released architectures, built by OpenCLIP on the meta device (shapes only, no weights)."""
    import open_clip
    with torch.device("meta"):
        model = open_clip.create_model(name, device="meta")
    backbone = as_backbone(model)
    encoder, image = TextEncoder(backbone), ImageEncoder(backbone)
    assert (encoder.width, encoder.num_layers) == text and (image.width, image.num_layers) == vision
    assert image.tower.prompt_placement == placement
    assert encoder.causal == ("SigLIP" not in name)


def test_siglip_logits_carry_its_bias(library_models):
    from trainers.coop import CoOpCLIP
    model = CoOpCLIP(trainers.build_cfg(), CLASSNAMES, library_models["siglip"][1]).eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        image, text = model.features(images)
        logits = model(images)
    scale = library_models["siglip"][0].logit_scale.exp()
    assert torch.allclose(logits, scale * image @ text.t() - 10, atol=1e-5)
