"""Checks that need a CUDA GPU (tools/gpu_check.sh runs them; skipped on a machine without one)."""
import pytest
import torch

import trainers
from trainers.clip_prompting import set_fast_paths, tiny_clip
from trainers.clip_prompting.loading import to_half

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CLASSES = ["red star", "blue hexagon", "green circle", "yellow square"]


def model_of(name, half=False):
    from trainers.coop import CoOpCLIP
    from trainers.mudpt import MuDPTCLIP
    node, cls = {"CoOp": ("COOP", CoOpCLIP), "MuDPT": ("MUDPT", MuDPTCLIP)}[name]
    torch.manual_seed(0)
    clip_model = tiny_clip()
    if half:
        to_half(clip_model)
    return cls(trainers.build_cfg(node), CLASSES, clip_model).cuda()


@pytest.mark.parametrize("name", ["CoOp", "MuDPT"])
def test_fast_paths_are_exact_on_cuda(name):
    model = model_of(name).eval()
    images = torch.randn(3, 3, 224, 224, device="cuda")
    with torch.no_grad():
        fast = model(images)
        set_fast_paths(model, False)
        reference = model(images)
    assert fast.device.type == "cuda"
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)


def test_half_precision_clip_stays_close_to_fp32():
    images = torch.randn(3, 3, 224, 224, device="cuda")
    with torch.no_grad():
        full = model_of("CoOp").eval()(images)
        half = model_of("CoOp", half=True).eval()(images)
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), full, rtol=5e-2, atol=5e-2)


def test_an_amp_step_with_the_cuda_scaler_updates_fp32_prompts():
    model = model_of("MuDPT").train()
    params = model.trainable_parameters()
    before = [p.detach().clone() for p in params]
    optim = torch.optim.SGD(params, lr=0.1)
    scaler = torch.amp.GradScaler("cuda")
    images, labels = torch.randn(4, 3, 224, 224, device="cuda"), torch.tensor([0, 1, 2, 3], device="cuda")
    for _ in range(3):  # the first steps may be skipped while the scale settles
        optim.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
        scaler.scale(loss).backward()
        scaler.step(optim)
        scaler.update()
    assert torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in params)
    assert any(not torch.equal(p, b) for p, b in zip(params, before))
