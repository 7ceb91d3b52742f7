"""tools/sweep.py --executor slurm on a real one-node Slurm (tools/slurm_local.sh).

Skipped, with the reason, where Slurm is not installed or does not start; CI installs it.
"""
import glob
import json
import os
import re
import statistics
import subprocess
import sys

import pytest

from datasets.fake import make_fake_dataset
from results.collect import collect_runs
from results.tables import build_tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM_LOCAL = os.path.join(ROOT, "tools", "slurm_local.sh")


@pytest.fixture(scope="session")  # set up before the session's tiny CLIP: a skip costs nothing
def slurm_conf():
    """The local Slurm's slurm.conf: the running one, or one started here (and stopped after)."""
    was_up = subprocess.run(["bash", SLURM_LOCAL, "status"], capture_output=True).returncode == 0
    start = subprocess.run(["bash", SLURM_LOCAL, "start"], capture_output=True, text=True)
    assert start.returncode != 2, start.stderr  # a usage error is a bug, not a missing Slurm
    if start.returncode != 0:
        pytest.skip("no local Slurm: " + " ".join(start.stderr.split()))
    yield re.search(r"export SLURM_CONF=(\S+)", start.stdout).group(1)
    if not was_up:
        subprocess.run(["bash", SLURM_LOCAL, "stop"], capture_output=True)


def test_sweep_through_slurm(slurm_conf, tiny_clip_path, tmp_path):
    make_fake_dataset("eurosat", str(tmp_path / "data"), num_classes=4, images_per_class=6)
    out = tmp_path / "output"
    env = dict(os.environ, SLURM_CONF=slurm_conf, DATA=str(tmp_path / "data"),
               CLIP_PATH=tiny_clip_path, OUTPUT=str(out), PYTHON=sys.executable)
    slurm = ["--executor", "slurm", "--gpus-per-job", "0", "--time", "10"]
    opts = ["--", "DATALOADER.NUM_WORKERS", "0", "OPTIM.MAX_EPOCH", "1"]

    def sweep(grid, *argv, **extra_env):
        return subprocess.run([sys.executable, "tools/sweep.py", *grid, *slurm, *argv, *opts],
                              cwd=ROOT, env=dict(env, **extra_env), capture_output=True,
                              text=True, timeout=600)

    # two few-shot runs (seeds 1 and 2): two Slurm jobs, run side by side on the node
    few_shot = ["--methods", "coop", "--protocols", "few_shot", "--datasets", "eurosat",
                "--seeds", "1", "2", "--shots", "2"]
    first = sweep(few_shot, "--wait", "--poll-seconds", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Submitted 2 Slurm job(s) for 2 chain(s)" in first.stdout
    assert first.stdout.splitlines()[-1].startswith(
        "2 Slurm jobs: done 2 | running 0 | pending 0 | failed 0")
    results = sorted(glob.glob(str(out / "eurosat/CoOp/*_2shots/seed*/results.json")))
    assert [os.path.basename(os.path.dirname(r)) for r in results] == ["seed1", "seed2"]
    accuracies = [json.load(open(r))["metrics"]["accuracy"] for r in results]
    table = build_tables(collect_runs(str(out)), keys=["few_shot"], shots=2)["few_shot"]
    cells = dict(table.rows)["CoOp"]
    cell = cells[table.header.index("EuroSAT") - 1]["accuracy"]
    assert cell.n == 2 and cell.mean == pytest.approx(statistics.mean(accuracies))

    # the same sweep again: everything is finished, nothing is submitted
    state = (out / "sweep_logs/slurm/state.json").read_text()
    second = sweep(few_shot)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Submitted 0 Slurm job(s)" in second.stdout
    assert (out / "sweep_logs/slurm/state.json").read_text() == state

    # a chain whose training fails (no dataset root): reported with its log, its test blocked
    base2new = ["--methods", "coop", "--protocols", "base2new", "--datasets", "eurosat",
                "--seeds", "1"]
    missing = str(tmp_path / "missing")
    failed = sweep(base2new, "--wait", "--poll-seconds", "1", DATA=missing)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    rows = {line.split()[0]: line.split() for line in failed.stdout.splitlines()
            if line.startswith("coop/")}
    log = str(out / "sweep_logs" / "coop__base2new_train__eurosat__1.log")
    assert rows["coop/base2new_train/eurosat/1"][1] == "failed"
    assert rows["coop/base2new_train/eurosat/1"][-1] == log
    assert f"dataset root DATA={missing} does not exist" in open(log).read()
    assert rows["coop/base2new_test/eurosat/1"][1] == "blocked"
    # asked again, it stays failed: submitted again only with --resubmit-failed
    again = sweep(base2new, DATA=missing)
    assert again.returncode == 1 and "Submitted 0 Slurm job(s)" in again.stdout
    assert log in again.stdout and "--resubmit-failed" in again.stdout
