"""Shared fixtures: a tiny random CLIP (real architecture) and the repository on sys.path."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dassl.torchvision_guard  # noqa: E402,F401  (before anything imports torchvision)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (run by tools/gpu_check.sh; skipped elsewhere)")


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory):
    """A 224-px, 12+12-layer random CLIP saved as a state dict (what make_tiny_clip.py writes)."""
    from trainers.clip_prompting.loading import tiny_clip
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    torch.save(tiny_clip().state_dict(), path)
    return str(path)


@pytest.fixture
def tiny_clip_model(tiny_clip_path):
    from trainers.clip_prompting import load_clip
    return load_clip("ViT-B/16", tiny_clip_path)
