"""The chunked text pass (MODEL.TEXT_CHUNK): the same loss and gradients as one pass, less memory."""
import importlib

import pytest
import torch

import trainers
from method_configs import descriptions_file, trainer_stub
from trainers.clip_prompting import set_text_chunk
from trainers.clip_prompting.encoders import check_text_chunk, chunk_rows

CLASSNAMES = [f"class {word} {i}" for i, word in enumerate(["dog", "sea lion", "airliner", "tabby cat", "tree"] * 3)]
DEPTHS = {"PROMPT_DEPTH_TEXT": 2, "PROMPT_DEPTH_VISION": 2}  # prompts in both blocks of the small CLIP
METHODS = [  # (module, model class, trainer class, config overrides)
    ("mudpt", "MuDPTCLIP", "MuDPT", {"DEEP_PROMPT_DEPTH": 2}), ("cocoop", "CoCoOpCLIP", "CoCoOp", {}),
    ("maple", "MaPLeCLIP", "MaPLe", {"PROMPT_DEPTH": 2}), ("promptsrc", "PromptSRCCLIP", "PromptSRC", DEPTHS),
    ("coop", "CoOpCLIP", "CoOp", {}), ("kgcoop", "KgCoOpCLIP", "KgCoOp", {}), ("ivlp", "IVLPCLIP", "IVLP", DEPTHS),
    ("dcp", "DCPCLIP", "DCP", {"PROMPT_DEPTH": 1}), ("dpt", "DPTCLIP", "DPT", {"BOTTOMLIMIT": 2}),
    ("mma", "MMACLIP", "MMA", {"ADAPTER_START": 1, "ADAPTER_END": 2}),
    ("cliplora", "CLIPLoRACLIP", "CLIPLoRA", {"DROPOUT_RATE": 0.0}),
    ("mmrl", "MMRLCLIP", "MMRL", {"REP_LAYERS": [1, 2]}),
    ("tcp", "TCPCLIP", "TCP", {"LAYER": 1}),
    ("coprompt", "CoPromptCLIP", "CoPrompt", {"PROMPT_DEPTH": 2}),
    ("lweib", "LwEIBCLIP", "LwEIB", {"ADAPTER_START": 1, "ADAPTER_END": 2}),
    ("hicropl", "HiCroPLCLIP", "HiCroPL", {"PROMPT_DEPTH": 2, "CROSS_LAYER": 1}),
]
DESCRIPTIONS = {}  # "path": CLASSNAMES' descriptions file, for the methods that read class descriptions


@pytest.fixture(scope="module", autouse=True)
def descriptions(tmp_path_factory):
    DESCRIPTIONS["path"] = descriptions_file(tmp_path_factory.mktemp("descriptions"), CLASSNAMES)


@pytest.fixture(scope="module")
def small_clip():
    """OpenAI's architecture at 32 px, 2 blocks per tower: the same code paths, quickly."""
    from trainers.clip_prompting import tiny_clip
    return tiny_clip(image_resolution=32, layers=2, patch_size=16)


def build(method, clip_model, chunk):
    module_name, model_class, trainer_class, keys = method
    module = importlib.import_module(f"trainers.{module_name}")
    trainer = getattr(module, trainer_class)
    cfg = trainers.build_cfg(trainer.cfg_node, **keys)
    cfg.DATASET.DESCRIPTIONS = DESCRIPTIONS["path"]
    torch.manual_seed(0)
    model = getattr(module, model_class)(cfg, CLASSNAMES, clip_model)
    set_text_chunk(model, chunk)
    stub = trainer_stub(trainer, model, cfg)
    return model, lambda images, labels: trainer.compute_loss(stub, images, labels)[0]


def train(method, clip_model, chunk, steps):
    """``steps`` SGD steps; the first step's loss and gradients, and the final parameters."""
    model, loss_of = build(method, clip_model, chunk)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    first = None
    for _ in range(steps):
        images = torch.randn(2, 3, 32, 32, generator=generator)
        labels = torch.randint(len(CLASSNAMES), (2,), generator=generator)
        optim.zero_grad()
        loss = loss_of(images, labels)
        loss.backward()
        if first is None:
            first = (loss.item(), [p.grad.clone() for p in params])
        optim.step()
    return first, [p.detach().clone() for p in params]


@pytest.mark.parametrize("method", METHODS, ids=[m[2] for m in METHODS])
def test_chunked_gradients_and_training_equal_one_pass(small_clip, method):
    steps = 10 if method[2] in ("MuDPT", "CoCoOp", "MaPLe", "PromptSRC") else 2
    (loss, grads), params = train(method, small_clip, 0, steps)
    (chunked_loss, chunked_grads), chunked_params = train(method, small_clip, 4, steps)  # 15 classes: 4 chunks
    assert chunked_loss == pytest.approx(loss, rel=1e-6, abs=1e-7)
    for g, c in zip(grads, chunked_grads):
        assert (g - c).abs().max() <= 1e-6 * max(1.0, g.abs().max()), method[2]
    for p, c in zip(params, chunked_params):
        assert (p - c).abs().max() <= 1e-5 * max(1.0, p.abs().max()), method[2]


def test_chunks_keep_only_pooled_features(small_clip):
    """The pass really runs in chunks: each chunk's blocks see at most the chunk's sequences."""
    model, _ = build(METHODS[0], small_clip, 4)
    seen = []
    encoder = model.text_encoder
    original = encoder.text_pass

    def spy(embeddings, *args):
        seen.append(embeddings.shape[0])
        return original(embeddings, *args)
    encoder.text_pass = spy
    model.text_features()
    assert seen == [4, 4, 4, 3]


def test_auto_chunks_only_large_passes_and_bad_settings_are_named():
    assert chunk_rows(None, 100, 20) is None  # 2,000 tokens: one pass, as before
    assert chunk_rows(None, 1000, 20) == 51  # 20,000 tokens: chunks of about 1,024 tokens
    assert chunk_rows(0, 1000, 20) is None and chunk_rows(64, 1000, 20) == 64 and chunk_rows(64, 10, 20) is None
    assert check_text_chunk("auto") is None and check_text_chunk(None) is None and check_text_chunk(8) == 8
    with pytest.raises(ValueError, match="MODEL.TEXT_CHUNK is -3; use auto"):
        check_text_chunk(-3)
