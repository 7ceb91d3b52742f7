"""One run on two processes (torchrun, gloo on CPU) equals the one-process run of the same command:
same global batch and gradient, same evaluation, one log, and an exact resume after a kill."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from dassl.utils.distributed import shard_range
from dassl.utils.logger import close_logger
from datasets.fake import make_fake_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"CoOp": ("vit_b16_ep50_ctxv1", "prompt_learner"),
           "MuDPT": ("vit_b16_bz4_ep10_nctx4_depth12", "MultimodalDeepPromptTuning")}


def test_shards_cover_every_index_once():
    for n in range(0, 12):
        for world in (1, 2, 3, 5):
            shards = [range(*shard_range(n, rank, world)) for rank in range(world)]
            assert [i for shard in shards for i in shard] == list(range(n))  # in order, no padding


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_clip_path):
    root = tmp_path_factory.mktemp("data")
    # 5 classes x 3 test images: an odd number, so the two evaluation shards differ in size
    make_fake_dataset("caltech101", str(root), num_classes=5, images_per_class=10)
    return {"root": str(root), "clip": tiny_clip_path, "tmp": tmp_path_factory.mktemp("runs")}


def command(setting, trainer, out):
    config, _ = CONFIGS[trainer]
    return ["--root", setting["root"], "--seed", "1", "--trainer", trainer,
            "--dataset-config-file", "configs/datasets/caltech101.yaml",
            "--config-file", f"configs/trainers/{trainer}/{config}.yaml", "--output-dir", str(out),
            "MODEL.BACKBONE.PATH", setting["clip"], "DATALOADER.NUM_WORKERS", "0", "OPTIM.MAX_EPOCH", "2",
            "DATASET.NUM_SHOTS", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "5"]


def torchrun(args, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "train.py", *args]


def kill_tree(pid):
    """SIGKILL a process and all its descendants (torchrun starts its workers in new sessions)."""
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            children += [int(c) for c in f.read().split()]
    os.kill(pid, signal.SIGKILL)  # first, so it cannot restart the workers
    for child in children:
        kill_tree(child)


def one_process(setting, trainer, out):
    try:
        train.main(command(setting, trainer, out))
    finally:
        close_logger()


def weights(out, trainer):
    path = os.path.join(out, CONFIGS[trainer][1], "model.pth.tar-2")
    return torch.load(path, weights_only=True)["state_dict"]


def accuracy_lines(out):
    with open(os.path.join(out, "log.txt")) as f:
        return [line for line in f if line.startswith("* accuracy:")]


@pytest.fixture(scope="module")
def runs(setting):
    """For each trainer: the one-process and the two-process output folders."""
    result = {}
    for trainer in CONFIGS:
        single, double = setting["tmp"] / f"{trainer}_1", setting["tmp"] / f"{trainer}_2"
        one_process(setting, trainer, single)
        proc = subprocess.run(torchrun(command(setting, trainer, double)), cwd=ROOT, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result[trainer] = (single, double, proc)
    return result


@pytest.mark.parametrize("trainer", list(CONFIGS))
def test_two_processes_train_and_evaluate_like_one(runs, trainer):
    single, double, proc = runs[trainer]
    a, b = weights(single, trainer), weights(double, trainer)
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    results = [json.loads((folder / "results.json").read_text())["metrics"] for folder in (single, double)]
    assert results[0] == results[1]
    with open(single / "log.txt") as f:
        total = [line for line in f if line.startswith("* total:")]
    assert total == ["* total: 15\n"]  # 5 classes x 3 test images, split 8 + 7 over the ranks
    assert accuracy_lines(double) == accuracy_lines(single) and len(accuracy_lines(double)) == 1
    assert sorted(p.name for p in double.iterdir() if p.name.startswith("log")) == ["log.txt"]
    facts = [json.loads((folder / "run_facts.json").read_text()) for folder in (single, double)]
    assert facts[0] == facts[1] and facts[0]["trainer"] == trainer  # rank 0 wrote the same facts
    assert not [p.name for p in double.iterdir() if p.name.startswith(".run_facts")]  # no temp file left
    losses = [[line.split(" loss ")[1].split()[0] for line in open(folder / "log.txt") if line.startswith("epoch [")]
              for folder in (single, double)]
    assert losses[0] == losses[1] and len(losses[0]) == 4  # the printed loss is the whole batch's
    assert proc.stdout.count("Setting fixed seed: 1") == 1  # rank 1 printed nothing


def test_a_killed_two_process_run_resumes_where_the_uninterrupted_one_ends(runs, setting):
    out = setting["tmp"] / "killed"
    args = command(setting, "CoOp", out)
    job = subprocess.Popen(torchrun(args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "prompt_learner" / "model-last.pth.tar"
    deadline = time.time() + 300
    while not last.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    kill_tree(job.pid)  # the whole job, as a cluster scheduler would
    job.wait()
    assert last.exists() and not (out / "results.json").exists(), "the job was not killed after epoch 1"

    proc = subprocess.run(torchrun(args), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = max(out.glob("log.txt*"), key=os.path.getmtime).read_text()
    assert "taking over the lock" in proc.stdout  # the killed job's lock is stale
    assert "Previous epoch: 1" in log and "epoch [1/2]" not in log
    a, b = weights(out, "CoOp"), weights(runs["CoOp"][1], "CoOp")
    assert all(torch.equal(a[k], b[k]) for k in a)
