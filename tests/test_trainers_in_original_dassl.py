"""Trainer files also run inside an original Dassl.pytorch + CoOp checkout.

They travel with their companions: the backbones/ package (every method reaches CLIP through
it), datasets/templates.py (the datasets' prompt templates) and datasets/descriptions.py (class
descriptions), both dropped into CoOp's datasets/.
They may import from ``dassl`` only names the original package exports, and read keys this
project adds to the config with a fallback. Checked twice: statically, every import in every
file of trainers/ (function-level ones included); and by importing every module of trainers/
in a subprocess whose ``dassl`` is a stand-in exposing the original's public names only, then
declaring every method's keys on a config tree of plain yacs nodes without the project's keys.
"""
import ast
import json
import os
import subprocess
import sys

from dassl.config.defaults import PROJECT_KEYS as ALL_PROJECT_KEYS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINERS = os.path.join(ROOT, "trainers")

# Public names of Dassl.pytorch 0.6.3 (commit c61a1b5), from each package's __init__ (and the
# __all__ lists it star-imports), leaving out the DA/DG/SSL trainer and dataset classes.
ORIGINAL_EXPORTS = {
    "dassl": [],
    "dassl.config": ["get_cfg_default", "clean_cfg", "cfg_default"],
    "dassl.engine": ["TRAINER_REGISTRY", "build_trainer", "TrainerX", "TrainerXU", "TrainerBase", "SimpleTrainer",
                     "SimpleNet"],
    "dassl.optim": ["build_optimizer", "build_lr_scheduler"],
    "dassl.metrics": ["compute_accuracy", "cosine_distance", "compute_distance_matrix", "euclidean_squared_distance"],
    "dassl.data": ["DataManager", "DatasetWrapper"],
    "dassl.data.datasets": ["DATASET_REGISTRY", "build_dataset", "Datum", "DatasetBase"],
    "dassl.data.transforms": ["INTERPOLATION_MODES", "build_transform"],
    "dassl.evaluation": ["build_evaluator", "EVALUATOR_REGISTRY", "EvaluatorBase", "Classification"],
    "dassl.utils": ["mkdir_if_missing", "check_isfile", "read_json", "write_json", "set_random_seed", "download_url",
                    "read_image", "collect_env_info", "listdir_nohidden", "get_most_similar_str_to_a_from_b",
                    "check_availability", "tolist_if_not", "Logger", "setup_logger", "AverageMeter", "MetricMeter",
                    "Registry", "save_checkpoint", "load_checkpoint", "resume_from_checkpoint", "open_all_layers",
                    "open_specified_layers", "count_num_param", "load_pretrained_weights", "init_network_weights"],
}
# Keys of this project's engine defaults that an original config lacks (CoOp's extend_cfg adds
# DATASET.SUBSAMPLE_CLASSES, so that one stays).
PROJECT_KEYS = [key.split(".") for key in ALL_PROJECT_KEYS if key != "DATASET.SUBSAMPLE_CLASSES"]


def trainer_files():
    for folder, _, files in os.walk(TRAINERS):
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def project_packages():
    """Top-level modules of this repository other than trainers/ and dassl/: absent from a CoOp checkout
    (or different there)."""
    names = set()
    for entry in os.listdir(ROOT):
        path = os.path.join(ROOT, entry)
        if entry.endswith(".py"):
            names.add(entry[:-3])
        elif os.path.isfile(os.path.join(path, "__init__.py")):
            names.add(entry)
    return names - {"trainers", "dassl", "conftest", "setup"} - set(COMPANIONS)


# What a CoOp checkout needs beside trainers/: these packages, or (a list) these modules of one.
COMPANIONS = {"backbones": None, "datasets": ["datasets.templates", "datasets.descriptions"]}


def is_companion(target):
    top = target.split(".")[0]
    return top in COMPANIONS and (COMPANIONS[top] is None or target in COMPANIONS[top])


def test_trainer_files_import_only_what_the_original_exports_and_read_project_keys_with_a_fallback():
    local = project_packages()
    problems, used = [], set()
    files = list(trainer_files())
    assert len(files) >= 15  # every method module and the shared clip_prompting package
    for path in files:
        where = os.path.relpath(path, ROOT)
        tree = ast.parse(open(path).read(), path)
        optional = optional_imports(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and \
                    [node.value.attr, node.attr] in [list(key[-2:]) for key in PROJECT_KEYS]:
                problems.append(f"{where}:{node.lineno} reads {node.value.attr}.{node.attr}, a key an original config "
                                f'lacks; read it with a fallback, e.g. .get("{node.attr}", "")')
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                module, names = node.module, [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                module, names = None, [alias.name for alias in node.names]
            else:
                continue
            for target in ([module] if module else names):
                top = target.split(".")[0]
                if top in local or (top in COMPANIONS and not is_companion(target)):
                    problems.append(f"{where}:{node.lineno} imports {target}, which a CoOp checkout does not have")
            if module and module.split(".")[0] == "dassl":
                if node in optional:
                    continue  # tried, with a fallback: only this project's engine has it
                exported = ORIGINAL_EXPORTS.get(module)
                if exported is None:
                    problems.append(f"{where}:{node.lineno} imports from {module}, not a public module of the original")
                    continue
                for name in names:
                    used.add(f"{module}.{name}")
                    if name not in exported:
                        problems.append(f"{where}:{node.lineno} imports {name} from {module}, which the original's "
                                        f"{module} does not export (it has: {', '.join(exported) or 'nothing'})")
            elif module is None and any(n.split(".")[0] == "dassl" for n in names):
                problems.append(f"{where}:{node.lineno} imports a dassl module; import names from its package instead")
    assert not problems, "\n".join(problems)
    assert {"dassl.engine.TRAINER_REGISTRY", "dassl.engine.TrainerX"} <= used


def optional_imports(tree):
    """Imports inside ``try: ... except ImportError:`` (they have a fallback when the name is absent)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(isinstance(h.type, ast.Name) and h.type.id == "ImportError"
                                             for h in node.handlers):
            found += [inner for stmt in node.body for inner in ast.walk(stmt)
                      if isinstance(inner, (ast.Import, ast.ImportFrom))]
    return found


STAND_IN = r"""
import importlib, json, os, pkgutil, sys, types
sys.path.insert(0, sys.argv[1])
checkout_datasets = types.ModuleType("datasets")  # CoOp's own datasets/ package, with templates.py added
checkout_datasets.__path__ = [os.path.join(sys.argv[1], "datasets")]
sys.modules["datasets"] = checkout_datasets
exports, project_keys = json.loads(sys.argv[2]), json.loads(sys.argv[3])
import dassl  # noqa: the environment: on CPU-only torch this makes torchvision importable, as a working install is
from dassl.config import get_cfg_default

real = {name: importlib.import_module(name) for name in exports}
for name in [m for m in sys.modules if m == "dassl" or m.startswith("dassl.")]:
    del sys.modules[name]
for name, names in exports.items():
    module = types.ModuleType(name)
    module.__path__ = []  # a package: only the stand-in modules below can be imported from it
    for attr in names:
        if hasattr(real[name], attr):
            setattr(module, attr, getattr(real[name], attr))
    sys.modules[name] = module
for name in exports:
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, sys.modules[name])

import trainers
modules = sorted(info.name for info in pkgutil.walk_packages(trainers.__path__, "trainers."))
for name in modules:
    importlib.import_module(name)

from yacs.config import CfgNode
cfg = CfgNode(get_cfg_default())  # plain yacs nodes all the way down, as the original's tree
for *parents, key in project_keys:
    node = cfg
    for parent in parents:
        node = node[parent]
    del node[key]
before = set(cfg.TRAINER)
trainers.extend_cfg(cfg)
added = sorted(set(cfg.TRAINER) - before)
assert all(type(cfg.TRAINER[k]) is CfgNode for k in added), added
print(json.dumps({"modules": modules, "nodes": added}))
"""


def test_every_trainer_module_imports_against_a_stand_in_of_the_original():
    run = subprocess.run([sys.executable, "-c", STAND_IN, ROOT, json.dumps(ORIGINAL_EXPORTS),
                          json.dumps(PROJECT_KEYS)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    on_disk = {os.path.relpath(p, ROOT)[:-3].replace(os.sep, ".") for p in trainer_files()}
    on_disk = {name[:-len(".__init__")] if name.endswith(".__init__") else name for name in on_disk} - {"trainers"}
    assert set(result["modules"]) == on_disk  # every module of trainers/ was imported
    assert {"COOP", "COCOOP", "MUDPT", "MAPLE", "ZSCLIP"} <= set(result["nodes"])
