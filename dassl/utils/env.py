"""Seeding, determinism and environment report."""
import os
import random

import numpy as np
import torch

__all__ = ["set_random_seed", "set_deterministic", "collect_env_info"]


def set_random_seed(seed):
    """Seed Python ``random``, NumPy, torch and every CUDA device."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def set_deterministic():
    """Trade speed for bit-reproducibility: no cuDNN autotuning, deterministic
    kernels where they exist (a warning, not an error, where they do not)."""
    # cuBLAS needs a fixed workspace to be deterministic; must be set before CUDA init.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def collect_env_info():
    """PyTorch's environment report plus the Pillow version."""
    import PIL
    from torch.utils.collect_env import get_pretty_env_info

    env_str = get_pretty_env_info()
    env_str += "\n        Pillow ({})".format(PIL.__version__)
    return env_str
