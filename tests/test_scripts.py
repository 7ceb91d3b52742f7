"""Experiment scripts: output folders, train.py argument lists, skip/re-run logic.

The scripts run in a copy of scripts/ inside a throw-away repo with small config files and a
stub interpreter (PYTHON) that records its argv and writes a fake log.txt / results.json.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STUB = """#!{python}
# Stand-in for `python train.py ...`: records argv, writes a CoOp-style log and results.json.
import json, os, sys, time
argv = sys.argv[1:]
started = time.time()
time.sleep(float(os.environ.get("STUB_SLEEP", "0")))
with open(os.environ["STUB_RECORD"], "a") as f:
    f.write(json.dumps(argv) + "\\n")
out = argv[argv.index("--output-dir") + 1]
os.makedirs(out, exist_ok=True)
seed = int(argv[argv.index("--seed") + 1])
accuracy = float(os.environ.get("STUB_ACCURACY", 60 + seed))
eval_only = "--eval-only" in argv
with open(os.path.join(out, "log.txt"), "w") as log:
    log.write("eval_only: %s\\n" % eval_only)
    log.write("cuda: %s\\n" % os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
    log.write("time: %f %f\\n" % (started, time.time()))
    crash = os.environ.get("STUB_CRASH")
    if crash and crash in out:
        log.write("epoch [1/10] batch [1/5] loss 2.0\\n")
        sys.exit(3)
    if not eval_only:
        log.write("Finish training\\n")
    log.write("=> result\\n* accuracy: %.1f%%\\n" % accuracy)
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({{"split": "test", "accuracy": accuracy}}, f)
"""

# config name -> OPTIM.MAX_EPOCH (distinct values prove the epoch is read from the file)
CONFIGS = {
    "MuDPT": {"vit_b16_bz4_ep10_nctx4_depth12": 7, "vit_b16_released_linear_nctx2_depth8": 3},
    "CoOp": {"vit_b16_ctxv1": 200, "vit_b16_ep50_ctxv1": 50, "vit_b16": 200,
             "vit_b16_ep50": 50, "vit_b16_ep100": 100},
    "CoCoOp": {"vit_b16_c4_ep10_batch1_ctxv1": 10},
    "ZeroshotCLIP": {"vit_b16": None},
}
DATASETS = ("dtd", "imagenet", "caltech101", "imagenet_a", "eurosat")


def make_fake_repo(root):
    """A repo with the real scripts/, small configs, a data folder and a stub interpreter."""
    repo = os.path.join(str(root), "repo")
    shutil.copytree(os.path.join(REPO, "scripts"), os.path.join(repo, "scripts"))
    os.makedirs(os.path.join(repo, "configs", "datasets"))
    for dataset in DATASETS:
        with open(os.path.join(repo, "configs", "datasets", f"{dataset}.yaml"), "w") as f:
            f.write(f"DATASET:\n  NAME: \"{dataset}\"\n")
    for trainer, configs in CONFIGS.items():
        folder = os.path.join(repo, "configs", "trainers", trainer)
        os.makedirs(folder)
        for name, epochs in configs.items():
            with open(os.path.join(folder, f"{name}.yaml"), "w") as f:
                f.write("DATALOADER:\n  TRAIN_X:\n    BATCH_SIZE: 4\n  MAX_EPOCH: 999\n")
                if epochs is not None:
                    f.write(f"OPTIM:\n  NAME: \"sgd\"\n  LR: 0.0025\n  MAX_EPOCH: {epochs}\n")
                f.write("MODEL:\n  BACKBONE:\n    NAME: \"ViT-B/16\"\n")
    os.makedirs(os.path.join(repo, "data"))
    stub = os.path.join(repo, "stub_python")
    with open(stub, "w") as f:
        f.write(STUB.format(python=sys.executable))
    os.chmod(stub, 0o755)
    return repo


def fake_env(repo, **extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATA", "OUTPUT", "CLIP_PATH", "GPU", "DRY_RUN", "LOAD_EPOCH")}
    env.update(PYTHON=os.path.join(repo, "stub_python"),
               STUB_RECORD=os.path.join(repo, "calls.jsonl"))
    env.update(extra)
    return env


def recorded_calls(repo):
    path = os.path.join(repo, "calls.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def run_script(repo, method, protocol, *args, cwd=None, **env):
    script = os.path.join("scripts", method, f"{protocol}.sh")
    if cwd is not None:  # launched from the script's own folder
        script = f"{protocol}.sh"
    return subprocess.run(["bash", script] + [str(a) for a in args],
                          cwd=cwd or repo, env=fake_env(repo, **env),
                          capture_output=True, text=True)


@pytest.fixture
def repo(tmp_path):
    return make_fake_repo(tmp_path)


def test_base2new_train_then_test_from_root_and_from_own_folder(repo):
    out = os.path.join(repo, "output")
    data = os.path.join(repo, "data")
    train = run_script(repo, "mudpt", "base2new_train", "dtd", 1, "DATALOADER.NUM_WORKERS", 0)
    assert train.returncode == 0, train.stderr
    train_dir = f"{out}/base2new/train_base/dtd/shots_16/MuDPT/vit_b16_bz4_ep10_nctx4_depth12/seed1"
    # launched from scripts/mudpt: same folders, same repo-relative config paths
    test = run_script(repo, "mudpt", "base2new_test", "dtd", 1, "DATALOADER.NUM_WORKERS", 0,
                      cwd=os.path.join(repo, "scripts", "mudpt"))
    assert test.returncode == 0, test.stderr
    test_dir = f"{out}/base2new/test_new/dtd/shots_16/MuDPT/vit_b16_bz4_ep10_nctx4_depth12/seed1"
    calls = recorded_calls(repo)
    assert calls == [
        ["train.py", "--root", data, "--seed", "1", "--trainer", "MuDPT",
         "--dataset-config-file", "configs/datasets/dtd.yaml",
         "--config-file", "configs/trainers/MuDPT/vit_b16_bz4_ep10_nctx4_depth12.yaml",
         "--output-dir", train_dir,
         "DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base",
         "DATALOADER.NUM_WORKERS", "0"],
        ["train.py", "--root", data, "--seed", "1", "--trainer", "MuDPT",
         "--dataset-config-file", "configs/datasets/dtd.yaml",
         "--config-file", "configs/trainers/MuDPT/vit_b16_bz4_ep10_nctx4_depth12.yaml",
         "--output-dir", test_dir,
         "--model-dir", train_dir, "--load-epoch", "7", "--eval-only",
         "DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "new",
         "DATALOADER.NUM_WORKERS", "0"],
    ]
    assert os.path.isfile(os.path.join(test_dir, "results.json"))
    assert "Running: " in test.stdout and "--load-epoch 7" in test.stdout


def test_few_shot_cross_dataset_folders_and_env(repo, tmp_path):
    out = str(tmp_path / "elsewhere")
    weights = tmp_path / "clip.pt"
    weights.write_bytes(b"x")
    env = dict(OUTPUT=out, CLIP_PATH=str(weights), DATA=os.path.join(repo, "data"))
    assert run_script(repo, "mudpt", "few_shot", "dtd", 2, 4, **env).returncode == 0
    assert run_script(repo, "mudpt", "few_shot", "eurosat", 3, **env).returncode == 0
    released = "vit_b16_released_linear_nctx2_depth8"
    assert run_script(repo, "mudpt", "xd_train", 1, CFG=released, **env).returncode == 0
    assert run_script(repo, "mudpt", "xd_test", "imagenet_a", 1, CFG=released, **env).returncode == 0
    calls = recorded_calls(repo)
    dirs = [c[c.index("--output-dir") + 1] for c in calls]
    assert dirs == [
        f"{out}/dtd/MuDPT/vit_b16_bz4_ep10_nctx4_depth12_4shots/seed2",
        f"{out}/eurosat/MuDPT/vit_b16_bz4_ep10_nctx4_depth12_16shots/seed3",
        f"{out}/imagenet/MuDPT/{released}_16shots/seed1",
        f"{out}/evaluation/MuDPT/{released}_16shots/imagenet_a/seed1",
    ]
    assert calls[0][-4:] == ["MODEL.BACKBONE.PATH", str(weights), "DATASET.NUM_SHOTS", "4"]
    assert calls[2][calls[2].index("--dataset-config-file") + 1] == "configs/datasets/imagenet.yaml"
    xd_test = calls[3]
    assert xd_test[xd_test.index("--model-dir") + 1] == dirs[2]
    assert xd_test[xd_test.index("--load-epoch") + 1] == "3"
    assert "DATASET.NUM_SHOTS" not in xd_test


def test_zero_shot_is_eval_only_without_model(repo):
    assert run_script(repo, "zsclip", "base2new_train", "dtd", 1).returncode == 0
    assert run_script(repo, "zsclip", "base2new_test", "dtd", 1).returncode == 0
    for call in recorded_calls(repo):
        assert "--eval-only" in call and "--model-dir" not in call and "--load-epoch" not in call
        assert call[call.index("--config-file") + 1] == "configs/trainers/ZeroshotCLIP/vit_b16.yaml"


def test_coop_picks_config_per_dataset_and_shots(repo):
    for args in (("base2new_train", "imagenet", 1), ("base2new_train", "dtd", 1),
                 ("few_shot", "dtd", 1, 2), ("few_shot", "dtd", 1, 8), ("few_shot", "dtd", 1)):
        result = run_script(repo, "coop", *args)
        assert result.returncode == 0, result.stderr
    configs = [c[c.index("--config-file") + 1].split("/")[-1] for c in recorded_calls(repo)]
    assert configs == ["vit_b16_ep50_ctxv1.yaml", "vit_b16_ctxv1.yaml", "vit_b16_ep50.yaml",
                       "vit_b16_ep100.yaml", "vit_b16.yaml"]


def test_finished_run_is_skipped_and_partial_run_is_rerun(repo):
    run_dir = os.path.join(repo, "output", "dtd", "MuDPT", "vit_b16_bz4_ep10_nctx4_depth12_16shots", "seed1")
    crashed = run_script(repo, "mudpt", "few_shot", "dtd", 1, STUB_CRASH="seed1")
    assert crashed.returncode == 3
    assert os.path.isfile(os.path.join(run_dir, "log.txt"))
    assert not os.path.exists(os.path.join(run_dir, "results.json"))

    rerun = run_script(repo, "mudpt", "few_shot", "dtd", 1)
    assert rerun.returncode == 0, rerun.stderr
    assert "unfinished run" in rerun.stdout
    stale = [n for n in os.listdir(run_dir) if n.startswith("log.txt.incomplete-")]
    assert len(stale) == 1
    with open(os.path.join(run_dir, stale[0])) as f:
        assert "Finish training" not in f.read()
    with open(os.path.join(run_dir, "log.txt")) as f:
        assert "Finish training" in f.read()

    again = run_script(repo, "mudpt", "few_shot", "dtd", 1)
    assert again.returncode == 0
    assert "Oops! The results exist at" in again.stdout
    assert len(recorded_calls(repo)) == 2  # the crash and the re-run; the skip ran nothing


def test_a_finished_run_of_other_settings_is_neither_skipped_nor_overwritten(repo):
    run_dir = os.path.join(repo, "output", "dtd", "MuDPT", "vit_b16_bz4_ep10_nctx4_depth12_16shots", "seed1")
    identity = {"trainer": "MuDPT", "seed": 1, "config": "vit_b16_bz4_ep10_nctx4_depth12", "num_shots": 16,
                "subsample": "all", "tag": ""}
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump({"metrics": {"accuracy": 50.0}, "identity": identity}, f)
    assert "Oops! The results exist" in run_script(repo, "mudpt", "few_shot", "dtd", 1).stdout

    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump({"metrics": {"accuracy": 50.0}, "identity": dict(identity, num_shots=4)}, f)
    for extra in ({}, {"DRY_RUN": "1"}):  # the sweep asks with DRY_RUN: it is refused the same way
        refused = run_script(repo, "mudpt", "few_shot", "dtd", 1, **extra)
        assert refused.returncode == 2
        assert "num_shots: 4 there, 16 here" in refused.stderr and "neither skipped nor overwritten" in refused.stderr
    assert not recorded_calls(repo)


def test_a_finished_run_trained_with_other_overrides_is_not_skipped(repo):
    """The overrides of the command are compared with the settings the run recorded (train.py records
    every key that changes the numbers): another learning rate is another run."""
    run_dir = os.path.join(repo, "output", "dtd", "MuDPT", "vit_b16_bz4_ep10_nctx4_depth12_16shots", "seed1")
    identity = {"trainer": "MuDPT", "seed": 1, "config": "vit_b16_bz4_ep10_nctx4_depth12", "num_shots": 16,
                "subsample": "all", "tag": "", "settings": {"OPTIM.LR": 0.0025, "INPUT.SIZE": [224, 224]}}
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump({"metrics": {"accuracy": 50.0}, "identity": identity}, f)
    same = run_script(repo, "mudpt", "few_shot", "dtd", 1, "OPTIM.LR", "0.0025", "INPUT.SIZE", "(224, 224)",
                      "DATALOADER.NUM_WORKERS", "0")  # workers change no number: not recorded, not compared
    assert "Oops! The results exist" in same.stdout
    refused = run_script(repo, "mudpt", "few_shot", "dtd", 1, "OPTIM.LR", "0.5")
    assert refused.returncode == 2 and "OPTIM.LR: 0.0025 there, 0.5 here" in refused.stderr
    assert not recorded_calls(repo)


def test_dry_run_reports_without_running(repo):
    result = run_script(repo, "mudpt", "base2new_test", "dtd", 2, DRY_RUN="1")
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert lines["output_dir"].endswith("test_new/dtd/shots_16/MuDPT/vit_b16_bz4_ep10_nctx4_depth12/seed2")
    assert lines["status"] == "todo"
    assert "--load-epoch 7" in lines["command"]
    assert recorded_calls(repo) == []


def test_load_epoch_override(repo):
    run_script(repo, "mudpt", "base2new_train", "dtd", 1)
    result = run_script(repo, "mudpt", "base2new_test", "dtd", 1, LOAD_EPOCH="2")
    assert result.returncode == 0
    test_call = recorded_calls(repo)[1]
    assert test_call[test_call.index("--load-epoch") + 1] == "2"


def test_max_epoch_given_as_option_sets_the_load_epoch(repo):
    result = run_script(repo, "mudpt", "base2new_test", "dtd", 1, "OPTIM.MAX_EPOCH", 4,
                        "DATALOADER.NUM_WORKERS", 0, "OPTIM.MAX_EPOCH", 1, DRY_RUN="1")
    assert result.returncode == 0, result.stderr
    assert "--load-epoch 1 --eval-only" in result.stdout


@pytest.mark.parametrize("args, message", [
    (("base2new_train", "dtd", 1, "DATALOADER.NUM_WORKERS"), "KEY VALUE pairs"),
    (("base2new_train", "nosuchset", 1), "unknown dataset 'nosuchset'"),
    (("base2new_train", "dtd", "one"), "SEED must be a whole number"),
    (("base2new_train", "dtd"), "Usage: bash scripts/mudpt/base2new_train.sh DATASET SEED"),
    (("base2new_test", "dtd", 1), "Train it first: bash scripts/mudpt/base2new_train.sh dtd 1"),
])
def test_bad_input_gets_a_clear_error(repo, args, message):
    result = run_script(repo, "mudpt", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert recorded_calls(repo) == []


def test_missing_data_root_and_weights_are_reported(repo, tmp_path):
    result = run_script(repo, "mudpt", "few_shot", "dtd", 1, DATA=str(tmp_path / "nodata"))
    assert result.returncode == 2 and "Set DATA=" in result.stderr
    result = run_script(repo, "mudpt", "few_shot", "dtd", 1, CLIP_PATH=str(tmp_path / "no.pt"))
    assert result.returncode == 2 and "CLIP_PATH=" in result.stderr


def test_every_method_folder_has_all_protocol_scripts():
    scripts = os.path.join(REPO, "scripts")
    methods = [m for m in os.listdir(scripts) if os.path.isfile(os.path.join(scripts, m, "method.sh"))]
    assert {"zsclip", "coop", "cocoop", "mudpt"} <= set(methods)
    for method in methods:
        for protocol in ("base2new_train", "base2new_test", "few_shot", "xd_train", "xd_test"):
            assert os.path.isfile(os.path.join(scripts, method, f"{protocol}.sh")), (method, protocol)


def test_configs_named_by_the_scripts_exist_in_the_repo():
    """Every config a script would pick must exist in configs/trainers (checked via DRY_RUN)."""
    if not os.path.isdir(os.path.join(REPO, "configs", "trainers")):
        pytest.skip("configs/trainers not written yet")
    env = {k: v for k, v in os.environ.items() if k not in ("OUTPUT", "DRY_RUN")}
    env.update(DRY_RUN="1", OUTPUT="/nonexistent-output")
    for method in ("zsclip", "coop", "cocoop", "mudpt"):
        for protocol, args in (("base2new_train", ["dtd", "1"]), ("base2new_test", ["imagenet", "1"]),
                               ("few_shot", ["dtd", "1", "2"]), ("xd_train", ["1"]),
                               ("xd_test", ["imagenet_r", "1"])):
            result = subprocess.run(["bash", f"scripts/{method}/{protocol}.sh"] + args, cwd=REPO,
                                    env=env, capture_output=True, text=True)
            assert result.returncode == 0, f"{method}/{protocol}: {result.stderr}"


def test_cfg_env_chooses_another_config(repo):
    result = run_script(repo, "coop", "base2new_train", "dtd", 1, CFG="vit_b16_ep100")
    assert result.returncode == 0, result.stderr
    call = recorded_calls(repo)[0]
    assert call[call.index("--config-file") + 1] == "configs/trainers/CoOp/vit_b16_ep100.yaml"
    assert call[call.index("--output-dir") + 1].endswith("/CoOp/vit_b16_ep100/seed1")


def test_each_job_prints_a_start_and_an_end_line(repo):
    done = run_script(repo, "mudpt", "few_shot", "dtd", 1, "4", STUB_ACCURACY="61.257")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("== start: mudpt few_shot dtd seed 1, 4 shots (")
    assert re.fullmatch(r"== done: mudpt few_shot dtd seed 1, 4 shots in 0:00:\d\d, accuracy 61\.26%", lines[-1])

    failed = run_script(repo, "mudpt", "base2new_train", "dtd", 2, STUB_CRASH="seed2")
    assert failed.returncode == 3
    run_dir = f"{repo}/output/base2new/train_base/dtd/shots_16/MuDPT/vit_b16_bz4_ep10_nctx4_depth12/seed2"
    assert failed.stdout.startswith("== start: mudpt base2new_train dtd seed 2 (")
    assert re.search(r"^== FAILED: mudpt base2new_train dtd seed 2 after 0:00:\d\d \(exit status 3\); "
                     rf"log: {re.escape(run_dir)}/log.txt$", failed.stderr, re.M)


def test_nproc_runs_train_py_through_torchrun(repo):
    def command(**env):
        result = run_script(repo, "coop", "few_shot", "dtd", 1, DRY_RUN="1", **env)
        return result, result.stdout.split("command: ", 1)[-1].split()

    _, one = command(NPROC="1")
    assert one[1] == "train.py"
    for env in ({"NPROC": "2"}, {"GPUS_PER_RUN": "2"}, {"NPROC": "02", "GPUS_PER_RUN": "02"}):
        _, two = command(**env)
        assert two[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                            "2", "train.py"]
        assert two[0] == one[0] and two[6:] == one[1:]  # the same interpreter and arguments
    bad, _ = command(NPROC="two")
    assert bad.returncode == 2 and "NPROC (or GPUS_PER_RUN) must be a whole number > 0" in bad.stderr
    both, _ = command(NPROC="2", GPUS_PER_RUN="4")
    assert both.returncode == 2 and "NPROC=2 and GPUS_PER_RUN=4 disagree" in both.stderr


def dry_run(method, script, *args):
    """{field: value} of ``scripts/<method>/<script>.sh ARGS`` with DRY_RUN=1 in the real repository; None
    when the method has no config for that protocol."""
    done = subprocess.run(["bash", f"scripts/{method}/{script}.sh", *args], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, DRY_RUN="1", OUTPUT="/nonexistent-output"))
    if done.returncode != 0:
        assert "names no config for the" in done.stderr, done.stderr
        return None
    return dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)


@pytest.mark.parametrize("method", sorted(name for name in os.listdir(os.path.join(REPO, "scripts"))
                                          if os.path.isfile(os.path.join(REPO, "scripts", name, "method.sh"))))
def test_every_test_script_loads_the_run_its_train_script_writes(method):
    """base2new_test.sh evaluates what base2new_train.sh trained (a dataset with a config of its own
    included), and xd_test.sh what xd_train.sh trained on ImageNet."""
    for dataset in ("dtd", "imagenet", "sun397"):
        train, test = dry_run(method, "base2new_train", dataset, "1"), dry_run(method, "base2new_test", dataset, "1")
        if train and test and "model_dir" in test:
            assert test["model_dir"] == train["output_dir"], (method, dataset)
    train, test = dry_run(method, "xd_train", "1"), dry_run(method, "xd_test", "dtd", "1")
    if train and test and "model_dir" in test:
        assert test["model_dir"] == train["output_dir"], method
