"""Sweep launcher: job grid, skip of finished runs, re-run of partial ones, GPU slots."""
import io
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from results.sweep import (BLOCKED, DONE, FAILED, SKIPPED, plan_jobs,  # noqa: E402
                           resolve_job, run_jobs)
from test_scripts import fake_env, make_fake_repo, recorded_calls  # noqa: E402


@pytest.fixture
def repo(tmp_path):
    return make_fake_repo(tmp_path)


def test_plan_grid_dependencies_and_dedup(repo):
    jobs = plan_jobs(repo, ["mudpt", "zsclip"], ["base2new", "cross_dataset", "dg"],
                     datasets=["dtd", "imagenet"], seeds=[1])
    names = [j.name for j in jobs]
    assert names[:5] == ["mudpt/base2new_train/dtd/1", "mudpt/base2new_test/dtd/1",
                         "mudpt/base2new_train/imagenet/1", "mudpt/base2new_test/imagenet/1",
                         "mudpt/xd_train/1"]
    # cross_dataset targets drop the ImageNet source; dg adds the 4 variants; one xd_train
    assert [n for n in names if n.startswith("mudpt/xd_")] == [
        "mudpt/xd_train/1", "mudpt/xd_test/dtd/1", "mudpt/xd_test/imagenetv2/1",
        "mudpt/xd_test/imagenet_sketch/1", "mudpt/xd_test/imagenet_a/1",
        "mudpt/xd_test/imagenet_r/1"]
    by_name = {j.name: j for j in jobs}
    assert by_name["mudpt/base2new_test/dtd/1"].depends_on == "mudpt/base2new_train/dtd/1"
    assert by_name["mudpt/xd_test/imagenet_a/1"].depends_on == "mudpt/xd_train/1"
    assert by_name["zsclip/base2new_test/dtd/1"].depends_on is None  # nothing to load
    assert len(names) == len(set(names)) == 2 * 10


def test_plan_few_shot_shots_and_errors(repo):
    jobs = plan_jobs(repo, ["coop"], ["few_shot"], datasets=["dtd"], seeds=[1, 2], shots=[2, 16],
                     opts=["DATALOADER.NUM_WORKERS", "0"])
    assert [j.name for j in jobs] == ["coop/few_shot/dtd/1/2", "coop/few_shot/dtd/1/16",
                                      "coop/few_shot/dtd/2/2", "coop/few_shot/dtd/2/16"]
    assert jobs[0].command(repo)[2:] == ["dtd", "1", "2", "DATALOADER.NUM_WORKERS", "0"]
    with pytest.raises(ValueError, match="Unknown method 'nosuch'.*Available: cocoop, coop"):
        plan_jobs(repo, ["nosuch"], ["few_shot"])
    with pytest.raises(ValueError, match="Unknown protocol 'fewshot'"):
        plan_jobs(repo, ["coop"], ["fewshot"])


def test_run_skips_finished_reruns_partial_and_blocks_after_a_crash(repo):
    env = fake_env(repo, STUB_CRASH="train_base/imagenet")
    out = os.path.join(repo, "output")
    jobs = plan_jobs(repo, ["mudpt"], ["base2new"], datasets=["dtd", "eurosat", "imagenet"],
                     seeds=[1])
    finished = f"{out}/base2new/train_base/dtd/shots_16/MuDPT/vit_b16_bz4_ep10_nctx4_depth12/seed1"
    os.makedirs(finished)
    open(os.path.join(finished, "results.json"), "w").write('{"accuracy": 70.0}')
    partial = f"{out}/base2new/train_base/eurosat/shots_16/MuDPT/vit_b16_bz4_ep10_nctx4_depth12/seed1"
    os.makedirs(partial)
    open(os.path.join(partial, "log.txt"), "w").write("epoch [1/7] ...\n")
    for job in jobs:
        resolve_job(job, repo, env)
    assert [j.state for j in jobs][:1] == [SKIPPED]

    stream = io.StringIO()
    ok = run_jobs(jobs, repo, env, os.path.join(repo, "logs"), poll_seconds=0.02, stream=stream)
    assert not ok
    states = {j.name: j.state for j in jobs}
    assert states == {
        "mudpt/base2new_train/dtd/1": SKIPPED,
        "mudpt/base2new_test/dtd/1": DONE,
        "mudpt/base2new_train/eurosat/1": DONE,
        "mudpt/base2new_test/eurosat/1": DONE,
        "mudpt/base2new_train/imagenet/1": FAILED,
        "mudpt/base2new_test/imagenet/1": BLOCKED,
    }
    ran = [c[c.index("--output-dir") + 1].split("/base2new/")[1] for c in recorded_calls(repo)]
    assert sorted(ran) == sorted([
        "test_new/dtd/shots_16/MuDPT/vit_b16_bz4_ep10_nctx4_depth12/seed1",
        "train_base/eurosat/shots_16/MuDPT/vit_b16_bz4_ep10_nctx4_depth12/seed1",
        "test_new/eurosat/shots_16/MuDPT/vit_b16_bz4_ep10_nctx4_depth12/seed1",
        "train_base/imagenet/shots_16/MuDPT/vit_b16_bz4_ep10_nctx4_depth12/seed1"])
    assert any(n.startswith("log.txt.incomplete-") for n in os.listdir(partial))
    text = stream.getvalue()
    assert "FAILED mudpt/base2new_train/imagenet/1 (exit code 3)" in text
    assert "BLOCKED mudpt/base2new_test/imagenet/1" in text
    assert text.rstrip().splitlines()[-1].startswith(
        "[6/6] running 0 | done 3 | skipped 1 | failed 1 | blocked 1")
    with open(jobs[4].log_path) as f:  # per-job log holds the script's output
        assert f.readline().startswith("$ bash ")

    # a second sweep without the crash finishes the rest and skips everything else
    for job in jobs:
        job.state = "waiting"
        resolve_job(job, repo, fake_env(repo))
    assert run_jobs(jobs, repo, fake_env(repo), os.path.join(repo, "logs"), poll_seconds=0.02,
                    stream=io.StringIO())
    assert [j.state for j in jobs].count(SKIPPED) == 4
    assert len(recorded_calls(repo)) == 6


def test_gpu_slots_one_job_per_gpu(repo):
    env = fake_env(repo, STUB_SLEEP="0.4")
    jobs = plan_jobs(repo, ["mudpt"], ["few_shot"], datasets=["dtd", "eurosat"], seeds=[1, 2])
    for job in jobs:
        resolve_job(job, repo, env)
    assert run_jobs(jobs, repo, env, os.path.join(repo, "logs"), gpus=["0", "1"],
                    poll_seconds=0.02, stream=io.StringIO())
    spans = {}
    for job in jobs:
        with open(os.path.join(job.output_dir, "log.txt")) as f:
            lines = dict(line.rstrip("\n").split(": ", 1) for line in f if ": " in line)
        start, end = map(float, lines["time"].split())
        spans.setdefault(lines["cuda"], []).append((start, end))
    assert sorted(spans) == ["0", "1"]
    for intervals in spans.values():
        intervals.sort()
        for (_, end), (start, _) in zip(intervals, intervals[1:]):
            assert start >= end - 0.05  # never two jobs at once on one GPU
    first = [min(s for s, _ in v) for v in spans.values()]
    assert abs(first[0] - first[1]) < 0.35  # the two GPUs worked in parallel


def test_cli_dry_run_lists_jobs(repo, tmp_path):
    shutil.copytree(os.path.join(REPO, "results"), os.path.join(repo, "results"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    os.makedirs(os.path.join(repo, "tools"))
    shutil.copy(os.path.join(REPO, "tools", "sweep.py"), os.path.join(repo, "tools"))
    env = fake_env(repo, OUTPUT="out")  # relative to the caller's folder
    result = subprocess.run([sys.executable, "tools/sweep.py", "--methods", "cocoop",
                             "--protocols", "base2new", "--datasets", "dtd", "--seeds", "3",
                             "--dry-run"], cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    root = os.path.join(repo, "out")
    assert lines == [
        "cocoop/base2new_train/dtd/3: to run -> "
        f"{root}/base2new/train_base/dtd/shots_16/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1/seed3",
        "cocoop/base2new_test/dtd/3: to run -> "
        f"{root}/base2new/test_new/dtd/shots_16/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1/seed3"
        "  [after cocoop/base2new_train/dtd/3]",
        "2 jobs, 2 to run, 0 already finished.",
    ]
    assert recorded_calls(repo) == []
    bad = subprocess.run([sys.executable, "tools/sweep.py", "--methods", "mudpt", "--datasets",
                          "nosuch", "--dry-run"], cwd=repo, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown dataset 'nosuch'" in bad.stderr
