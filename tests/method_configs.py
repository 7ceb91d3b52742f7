"""Which config each trainer's experiment scripts run: read from the scripts themselves (their
DRY_RUN output), so tests use what users run and a trainer without scripts is noticed."""
import functools
import glob
import json
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def descriptions_file(folder, classnames):
    """A class descriptions file (DATASET.DESCRIPTIONS) for ``classnames``, for the trainers that read one."""
    path = os.path.join(str(folder), "descriptions.json")
    with open(path, "w") as f:
        json.dump({name: [f"a {name} seen up close.", f"the shape of a {name}."] for name in classnames}, f)
    return path


def trainer_stub(trainer_class, model, cfg):
    """What a trainer's ``compute_loss`` reads of its trainer, to call it on ``model`` without building one."""
    import types

    import torch
    return types.SimpleNamespace(model=model, epoch=0, cfg=cfg, device=torch.device("cpu"),
                                 method_cfg=getattr(cfg.TRAINER, trainer_class.cfg_node), reference_numerics=False,
                                 loss_logits=lambda logits: logits.float())


def project_trainers():
    """The trainers of the project's trainers/ package (tests register toy trainers too)."""
    import trainers  # noqa: F401  (registers every trainer)
    from dassl.engine import TRAINER_REGISTRY
    return sorted(name for name in TRAINER_REGISTRY.registered_names()
                  if TRAINER_REGISTRY.get(name).__module__.startswith("trainers."))


@functools.lru_cache(maxsize=None)
def script_folders():
    """{trainer name: its folder under scripts/}, from each method.sh's TRAINER=."""
    folders = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "scripts", "*", "method.sh"))):
        with open(path) as f:
            match = re.search(r"^TRAINER=(\S+)", f.read(), re.M)
        if match:
            folders.setdefault(match.group(1), os.path.basename(os.path.dirname(path)))
    return folders


@functools.lru_cache(maxsize=None)
def base2new_config(folder, dataset="caltech101"):
    """The --config-file that scripts/<folder>/base2new_train.sh runs for ``dataset``."""
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", folder, "base2new_train.sh"), dataset, "1"],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, DRY_RUN="1"))
    if done.returncode != 0:
        raise RuntimeError(f"scripts/{folder}/base2new_train.sh refused a dry run: {done.stderr}")
    words = done.stdout.split()
    return os.path.join(ROOT, words[words.index("--config-file") + 1])
