"""The shared prompt-aware CLIP forward, CLIP loading, and class prompts."""
import pytest
import torch

from trainers.clip_prompting import (ClassPrompts, ImageEncoder, TextEncoder, deep_prompt_hook,
                                     init_context, load_clip, tiny_clip, tokenize)
from trainers.clip_prompting.loading import (ClipWeightsError, ClipWeightsNotFound, check_architecture,
                                             file_architecture, load_clip_from_cfg, resolve_weights)

CLASSNAMES = ["dog", "golden_retriever", "sea lion", "airliner"]


def both_paths(encoder, fn):
    encoder.fast = True
    fast = fn()
    encoder.fast = False
    reference = fn()
    encoder.fast = True
    return fast, reference


def test_text_encoder_without_prompts_equals_stock_clip(tiny_clip_model):
    ids = tokenize([f"a photo of a {c}." for c in CLASSNAMES] + ["x " * 40])
    with torch.no_grad():
        stock = tiny_clip_model.encode_text(ids)
        encoder = TextEncoder(tiny_clip_model)
        fast, reference = both_paths(encoder, lambda: encoder.encode_ids(ids))
    assert stock.shape == (5, 64)
    assert (fast - stock).abs().max() < 1e-5
    assert (reference - stock).abs().max() < 1e-5


def test_image_encoder_without_prompts_equals_stock_clip(tiny_clip_model):
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        stock = tiny_clip_model.encode_image(images)
        encoder = ImageEncoder(tiny_clip_model)
        fast, reference = both_paths(encoder, lambda: encoder(images))
    assert stock.shape == (3, 64)
    assert (fast - stock).abs().max() < 1e-5
    assert (reference - stock).abs().max() < 1e-5


def test_truncated_text_path_is_exact_with_deep_prompts(tiny_clip_model):
    torch.manual_seed(0)
    encoder = TextEncoder(tiny_clip_model)
    classes = ClassPrompts(encoder, CLASSNAMES, "X X X X", 4)
    ctx = torch.randn(4, 64)
    deep = torch.randn(11, 4, 64)
    hook = deep_prompt_hook(deep, start=1)
    with torch.no_grad():
        fast, reference = both_paths(
            encoder, lambda: encoder(classes.assemble(ctx), classes.eot_index, hook=hook))
    assert int(classes.eot_index.max()) < 20  # the fast path really ran on a short sequence
    assert (fast - reference).abs().max() < 1e-5


def test_visual_prompts_are_appended_and_replaced(tiny_clip_model):
    torch.manual_seed(0)
    encoder = ImageEncoder(tiny_clip_model)
    images = torch.randn(2, 3, 224, 224)
    shallow, deep = torch.randn(4, 64), torch.randn(11, 4, 64)
    seen = []

    def spy(index, x):
        seen.append(x.shape[1])
        return deep_prompt_hook(deep, start=-4)(index, x)

    with torch.no_grad():
        fast, reference = both_paths(encoder, lambda: encoder(images, shallow, spy))
        plain = encoder(images)
    assert seen[:12] == [1 + 49 + 4] * 12  # CLS + 7x7 patches + 4 prompts, every block
    assert (fast - reference).abs().max() < 1e-5
    assert (fast - plain).abs().max() > 1e-4  # the prompts do act through attention


def test_word_initialised_context_reproduces_the_plain_prompt(tiny_clip_model):
    encoder = TextEncoder(tiny_clip_model)
    ctx, prefix = init_context(encoder, 4, "a photo of a")
    assert prefix == "a photo of a"
    classes = ClassPrompts(encoder, CLASSNAMES, prefix, 4)
    with torch.no_grad():
        learned = encoder(classes.assemble(ctx), classes.eot_index)
        plain = tiny_clip_model.encode_text(tokenize([f"a photo of a {c.replace('_', ' ')}." for c in CLASSNAMES]))
    assert (learned - plain).abs().max() < 1e-5


def test_short_init_phrase_keeps_the_whole_template(tiny_clip_model):
    encoder = TextEncoder(tiny_clip_model)
    ctx, prefix = init_context(encoder, 2, "a photo of a")
    assert prefix == "a photo of a" and ctx.shape == (2, 64)
    with pytest.warns(UserWarning, match="initialised randomly"):
        ctx, prefix = init_context(encoder, 6, "a photo of a")
    assert prefix == "X X X X X X" and abs(float(ctx.std()) - 0.02) < 0.01


def test_loading_state_dict_and_jit_archive_is_exact_fp32(tiny_clip_path, tmp_path):
    model = load_clip("ViT-B/16", tiny_clip_path)
    reference = torch.load(tiny_clip_path, weights_only=True)
    assert model.visual.conv1.weight.dtype == torch.float32
    assert torch.equal(model.token_embedding.weight, reference["token_embedding.weight"])

    small = tiny_clip(image_resolution=32, layers=2, patch_size=8)
    archive = tmp_path / "small_jit.pt"
    traced = torch.jit.trace(small, (torch.randn(1, 3, 32, 32), tokenize(["a dog"])), check_trace=False)
    traced.save(str(archive))
    loaded = load_clip("ViT-B/16", str(archive))
    assert torch.equal(loaded.visual.proj, small.visual.proj)
    assert loaded.visual.input_resolution == 32


def test_missing_weights_give_one_clear_message(tmp_path, monkeypatch):
    with pytest.raises(ClipWeightsNotFound, match="MODEL.BACKBONE.PATH"):
        resolve_weights("ViT-B/16", str(tmp_path / "nowhere.pt"))
    monkeypatch.setattr("trainers.clip_prompting.loading.CLIP_CACHE_DIR", str(tmp_path))

    def offline(url, root):
        raise OSError("network is unreachable")
    monkeypatch.setattr("clip.clip._download", offline)
    with pytest.raises(ClipWeightsNotFound) as info:
        resolve_weights("ViT-B/16")
    message = str(info.value)
    assert "ViT-B-16.pt" in message and "MODEL.BACKBONE.PATH" in message and "offline" in message
    with pytest.raises(ValueError, match="Unknown CLIP backbone"):
        resolve_weights("ViT-X/99")


def test_half_precision_clip_runs_the_prompt_aware_forward(tiny_clip_path):
    from trainers.clip_prompting.loading import to_half
    model = to_half(load_clip("ViT-B/16", tiny_clip_path))
    assert model.visual.conv1.weight.dtype == torch.float16
    encoder = TextEncoder(model)
    ids = tokenize(["a photo of a dog."])
    try:
        features = encoder.encode_ids(ids)
    except RuntimeError as exc:  # some CPU builds lack half kernels; GPUs have them
        pytest.skip(f"fp16 kernels unavailable on this CPU: {exc}")
    assert features.dtype == torch.float16 and torch.isfinite(features).all()


def test_visual_prompt_methods_refuse_a_resnet_backbone():
    from trainers.clip_prompting.loading import build_clip
    resnet = build_clip(64, 64, (1, 1, 1, 1), 64, None, transformer_width=64, transformer_layers=2)
    encoder = ImageEncoder(resnet)
    assert encoder(torch.randn(1, 3, 64, 64)).shape == (1, 64)  # plain features still work
    # the message names what the weights are, also when MODEL.BACKBONE.NAME says otherwise
    with pytest.raises(ValueError, match=r"TRAINER.MUDPT: this method works inside the image transformer, so it needs a ViT "
                                         r"backbone \(MODEL.BACKBONE.NAME "
                                         r"is ViT-B/16, but the CLIP weights are ResNet \(custom: blocks 1-1-1-1, "
                                         r"width 64, 64 px\)\)"):
        encoder.require_vit("TRAINER.MUDPT", "ViT-B/16")
    with pytest.raises(ValueError, match="ResNet CLIP backbones support text-side methods only"):
        encoder(torch.randn(1, 3, 64, 64), prompts=torch.zeros(2, 64))


# OpenAI's models by their build arguments: embed dim, input px, vision layers, vision width,
# patch (None: ResNet), text width. Built on the meta device: shapes only, no memory, no weights.
OPENAI_SHAPES = {
    "RN50": (1024, 224, (3, 4, 6, 3), 64, None, 512),
    "RN101": (512, 224, (3, 4, 23, 3), 64, None, 512),
    "RN50x4": (640, 288, (4, 6, 10, 6), 80, None, 640),
    "ViT-B/32": (512, 224, 12, 768, 32, 512),
    "ViT-L/14@336px": (768, 336, 24, 1024, 14, 768),
}


@pytest.mark.parametrize("name", OPENAI_SHAPES)
def test_architecture_is_read_from_the_weights(name):
    from clip.model import CLIP
    embed, pixels, layers, width, patch, text_width = OPENAI_SHAPES[name]
    with torch.device("meta"):
        model = CLIP(embed, pixels, layers, width, patch, 77, 49408, text_width, text_width // 64, 12)
    assert file_architecture(model.state_dict(), "w.pt") == name


def test_a_custom_clip_runs_under_a_standard_name_of_its_family_and_is_logged(tiny_clip_path, capsys):
    load_clip("ViT-B/16", tiny_clip_path)  # what the tests and the demo do
    out = capsys.readouterr().out
    assert "CLIP architecture: ViT (custom: width 64, 12 layers, patch 32, 224 px)\n" in out
    assert "not the standard ViT-B/16" in out
    check_architecture("ViT-B/16", "ViT-B/16", "w.pt")
    check_architecture("my-mini-clip", "RN50", "w.pt")  # not a standard name: nothing to contradict
    with pytest.raises(ClipWeightsError, match=r'MODEL.BACKBONE.NAME is ViT-B/32, but "w.pt" holds ViT-B/16 '
                                               r"weights: set MODEL.BACKBONE.NAME ViT-B/16"):
        check_architecture("ViT-B/32", "ViT-B/16", "w.pt")
    with pytest.raises(ClipWeightsError, match=r"holds ViT \(custom: .*\) weights: use a ViT name"):
        check_architecture("RN50", "ViT (custom: width 64, 12 layers, patch 32, 224 px)", "w.pt")


def test_weights_path_is_optional_in_a_config_of_the_original_dassl(tiny_clip_path, tmp_path, monkeypatch):
    import shutil

    from yacs.config import CfgNode
    shutil.copy(tiny_clip_path, tmp_path / "ViT-B-16.pt")  # the CLIP cache's file name
    monkeypatch.setattr("trainers.clip_prompting.loading.CLIP_CACHE_DIR", str(tmp_path))
    cfg = CfgNode({"MODEL": {"BACKBONE": {"NAME": "ViT-B/16", "PRETRAINED": True}}})  # no PATH key
    assert load_clip_from_cfg(cfg).visual.conv1.weight.shape == (64, 3, 32, 32)
