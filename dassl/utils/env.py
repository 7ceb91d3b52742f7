"""Seeding, determinism and environment report."""
import functools
import os
import random

import numpy as np
import torch

__all__ = ["set_random_seed", "set_deterministic", "collect_env_info", "get_rng_state", "set_rng_state"]


def set_random_seed(seed):
    """Seed Python ``random``, NumPy, torch and every CUDA device."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def get_rng_state():
    """Every global RNG state (Python, NumPy, torch, CUDA) as tensors and plain values, so it
    can be stored in a checkpoint that loads with ``weights_only=True``."""
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "random": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    """Restore what ``get_rng_state`` returned."""
    rnd = state["random"]
    random.setstate((rnd["version"], tuple(int(x) for x in rnd["state"].tolist()), rnd["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def set_deterministic():
    """Trade speed for bit-reproducibility: no cuDNN autotuning, deterministic
    kernels where they exist (a warning, not an error, where they do not)."""
    # cuBLAS needs a fixed workspace to be deterministic; must be set before CUDA init.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


@functools.lru_cache(maxsize=1)
def collect_env_info():
    """PyTorch's environment report plus the Pillow version (computed once per process: it
    runs pip, about a second)."""
    import PIL
    from torch.utils.collect_env import get_pretty_env_info

    env_str = get_pretty_env_info()
    env_str += "\n        Pillow ({})".format(PIL.__version__)
    return env_str
