"""Sweep launcher: job grid, skip of finished runs, re-run of partial ones, GPU slots."""
import io
import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from results.sweep import (BLOCKED, DONE, FAILED, RUNNING, SKIPPED, eta_seconds,  # noqa: E402
                           plan_chains, plan_jobs, resolve_job)
from results.sweep_local import run_jobs  # noqa: E402
from results.sweep_slurm import (NOT_SUBMITTED, PENDING, SlurmOptions,  # noqa: E402
                                 SlurmSweep, script_environment)
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
    with pytest.raises(ValueError, match="Unknown method 'nosuch'.*Available: .*cocoop, coop, "):
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
    lines = text.rstrip().splitlines()
    assert lines[-1].startswith("[6/6] running 0 | done 3 | skipped 1 | failed 1 | blocked 1")
    assert "| eta --:--:--" in lines[0] and "| eta 0:00:00" in lines[-1]
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


def test_eta_from_finished_work():
    assert eta_seconds([], remaining=5) is None  # nothing finished yet: no estimate
    # mean 15 s; 3 left, one of them 5 s in; 2 at a time -> (3 * 15 - 5) / 2
    assert eta_seconds([10, 20], remaining=3, running_elapsed=[5], parallel=2) == 20
    # a unit running longer than the mean counts as about to finish, never as negative work
    assert eta_seconds([10], remaining=1, running_elapsed=[30]) == 0


def test_chains_group_each_training_with_its_tests(repo):
    jobs = plan_jobs(repo, ["mudpt", "zsclip"], ["base2new", "cross_dataset", "few_shot"],
                     datasets=["dtd", "eurosat"], seeds=[1])
    chains = {chain.name: [job.name for job in chain.jobs] for chain in plan_chains(jobs)}
    assert chains["mudpt/base2new_train/dtd/1"] == ["mudpt/base2new_train/dtd/1",
                                                    "mudpt/base2new_test/dtd/1"]
    assert chains["mudpt/xd_train/1"] == ["mudpt/xd_train/1", "mudpt/xd_test/dtd/1",
                                          "mudpt/xd_test/eurosat/1"]
    assert chains["mudpt/few_shot/dtd/1/16"] == ["mudpt/few_shot/dtd/1/16"]
    # a training-free method loads no model: every job is a chain of its own
    assert chains["zsclip/base2new_test/dtd/1"] == ["zsclip/base2new_test/dtd/1"]
    assert sum(len(c) for c in chains.values()) == len(jobs)
    # mudpt: 2 base2new, 1 cross-dataset, 2 few-shot; zsclip: its 4 + 3 + 2 jobs one by one
    assert len(chains) == 2 + 1 + 2 + 9


class FakeExecutor:
    """Stands in for submitit's SlurmExecutor: records the submissions, runs nothing."""

    def __init__(self, folder):
        self.folder, self.jobs, self.names = folder, [], []

    def update_parameters(self, job_name):
        self.names.append(job_name)

    def submit(self, fn, *args):
        job_id = str(100 + len(self.jobs))
        job = SimpleNamespace(job_id=job_id, fn=fn, args=args,
                              paths=SimpleNamespace(stdout=f"{self.folder}/{job_id}_0_log.out"))
        self.jobs.append(job)
        return job


def run_on_node(job, monkeypatch, **env):
    """What the Slurm job does: call the pickled function in the job's environment."""
    monkeypatch.setenv("SLURM_JOB_ID", job.job_id)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        return job.fn(*job.args)
    except RuntimeError as error:
        return error


def test_slurm_submit_skip_status_and_resubmit(repo, monkeypatch):
    env = fake_env(repo)
    log_dir = os.path.join(repo, "output", "sweep_logs")
    jobs = plan_jobs(repo, ["mudpt"], ["base2new"], datasets=["dtd", "eurosat", "imagenet"],
                     seeds=[1])
    for job in jobs:
        resolve_job(job, repo, env)
    os.makedirs(jobs[0].output_dir)  # dtd trained before: only its test is left
    open(os.path.join(jobs[0].output_dir, "results.json"), "w").write('{"accuracy": 70.0}')
    chains = plan_chains(jobs)
    queue = {}
    sweep = SlurmSweep(repo, log_dir, queue=lambda: dict(queue))
    executor = FakeExecutor(os.path.join(log_dir, "slurm", "submitit"))
    updates = script_environment(env, gpus_per_job=2)
    assert updates == {"PYTHON": env["PYTHON"], "NPROC": "2"}

    assert sweep.submit(chains, executor, updates) == chains
    assert executor.names == [c.name for c in chains]
    assert [job.name for job in executor.jobs[0].args[0]] == ["mudpt/base2new_test/dtd/1"]
    queue.update({"100": "PENDING", "101": "PENDING", "102": "RUNNING"})
    # state.json is what a later call reads: nothing is submitted twice
    again = SlurmSweep(repo, log_dir, queue=lambda: dict(queue))
    assert again.submit(chains, executor, updates) == [] and len(executor.jobs) == 3
    rows = again.job_rows(chains, queue)
    assert [row[1] for row in rows] == [DONE, PENDING, PENDING, PENDING, PENDING, PENDING]

    # the nodes run the chains (Slurm gave them GPU 3); ImageNet's training crashes
    for job in executor.jobs:
        run_on_node(job, monkeypatch, STUB_RECORD=env["STUB_RECORD"],
                    STUB_CRASH="train_base/imagenet", CUDA_VISIBLE_DEVICES="3", GPU="7")
    calls = recorded_calls(repo)
    assert len(calls) == 4  # dtd test; eurosat train + test; imagenet train, not its test
    # two GPUs per job: each run goes through torchrun, on the GPUs Slurm gave (GPU is dropped)
    assert all(c[:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
               for c in calls)
    assert all("cuda: 3" in open(os.path.join(j.output_dir, "log.txt")).read()
               for j in jobs[1:4])
    queue.update({"100": "COMPLETED", "101": "COMPLETED", "102": "FAILED"})
    text, states = sweep.status(chains)
    assert states == [DONE, DONE, FAILED]
    rows = {row[0]: row for row in sweep.job_rows(chains, queue)}
    crashed = rows["mudpt/base2new_train/imagenet/1"]
    assert crashed[1:3] == (FAILED, "102")
    assert crashed[3] == os.path.join(log_dir, "mudpt__base2new_train__imagenet__1.log")
    assert "Running: " in open(crashed[3]).read()  # the script's own output
    assert rows["mudpt/base2new_test/imagenet/1"][1] == BLOCKED
    assert rows["mudpt/base2new_test/eurosat/1"][1:3] == (DONE, "101")
    assert text.splitlines()[-1] == ("3 Slurm jobs: done 2 | running 0 | pending 0 | failed 1 | "
                                     "not submitted 0 | eta 0:00:00")
    assert crashed[3] in text

    # a failed chain is submitted again only on request, with the runs it still lacks
    assert sweep.submit(chains, executor, updates) == []
    assert sweep.submit(chains, executor, updates, resubmit_failed=True) == chains[2:]
    assert [job.name for job in executor.jobs[3].args[0]] == [
        "mudpt/base2new_train/imagenet/1", "mudpt/base2new_test/imagenet/1"]
    # that job is cancelled before it starts: no verdict of its own, so Slurm's log is shown
    queue["103"] = "CANCELLED"
    rows = {row[0]: row for row in sweep.job_rows(chains, queue)}
    assert rows["mudpt/base2new_train/imagenet/1"][1:] == (
        FAILED, "103", os.path.join(log_dir, "slurm", "submitit", "103_0_log.out"))
    assert rows["mudpt/base2new_test/imagenet/1"][1] == BLOCKED


def test_slurm_eta_and_running_job(repo, monkeypatch):
    env = fake_env(repo)
    log_dir = os.path.join(repo, "logs")
    jobs = plan_jobs(repo, ["coop"], ["few_shot"], datasets=["dtd", "eurosat", "caltech101"],
                     seeds=[1])
    for job in jobs:
        resolve_job(job, repo, env)
    chains = plan_chains(jobs)
    queue = {}
    sweep = SlurmSweep(repo, log_dir, queue=lambda: dict(queue))
    executor = FakeExecutor(log_dir)
    sweep.submit(chains[:2], executor, script_environment(env, 0))
    assert script_environment(env, 0)["NPROC"] == "1"
    run_on_node(executor.jobs[0], monkeypatch, STUB_RECORD=env["STUB_RECORD"])
    queue.update({"100": "COMPLETED", "101": "RUNNING"})
    record_path = executor.jobs[1].args[-1]  # the running job has written its record
    with open(record_path, "w") as f:
        json.dump({"job_id": "101", "start": 1000.0, "current": jobs[1].name}, f)
    with open(executor.jobs[0].args[-1]) as f:  # the finished one's, with its real duration
        first = json.load(f)
    first.update(start=900.0, end=960.0)
    with open(executor.jobs[0].args[-1], "w") as f:
        json.dump(first, f)
    states = [sweep.chain_state(c, queue) for c in chains]
    assert states == [DONE, RUNNING, NOT_SUBMITTED]
    assert sweep.eta(chains, states, now=1020.0) == 40.0  # 60 s per chain, 20 s in
    rows = sweep.job_rows(chains, queue)
    assert rows[1] == (jobs[1].name, RUNNING, "101",
                       os.path.join(log_dir, "coop__few_shot__eurosat__1__16.log"))
    assert rows[2] == (jobs[2].name, NOT_SUBMITTED, "", "")


def test_slurm_options_become_sbatch_lines(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string  # the text submitit hands to sbatch

    def sbatch(options):
        return _make_sbatch_string(command="run", folder=str(tmp_path),
                                   **options.sbatch_parameters("/repo")).splitlines()

    cpu = sbatch(SlurmOptions(time_min=30, gpus_per_job=0))
    assert "#SBATCH --time=30" in cpu and "#SBATCH --chdir=/repo" in cpu
    assert not any("gpu" in line or "gres" in line for line in cpu)  # a CPU-only job
    gpu = sbatch(SlurmOptions(time_min=240, gpus_per_job=2, partition="p", cpus_per_job=8,
                              mem="64G", account="a", qos="q", extra={"constraint": "a100"}))
    for line in ("--gpus-per-node=2", "--partition=p", "--cpus-per-task=8", "--mem=64G",
                 "--account=a", "--qos=q", "--constraint=a100", "--time=240"):
        assert "#SBATCH " + line in gpu
    for bad, message in ((dict(time_min=0), "--time"),
                         (dict(time_min=5, gpus_per_job=-1), "--gpus"),
                         (dict(time_min=5, mem="lots"), "--mem takes Slurm's syntax")):
        with pytest.raises(ValueError, match=message):
            SlurmOptions(**bad)


def test_cli_executor_options_are_checked(repo):
    shutil.copytree(os.path.join(REPO, "results"), os.path.join(repo, "results"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    os.makedirs(os.path.join(repo, "tools"))
    shutil.copy(os.path.join(REPO, "tools", "sweep.py"), os.path.join(repo, "tools"))

    def sweep(*argv):
        return subprocess.run([sys.executable, "tools/sweep.py", "--methods", "coop",
                               "--datasets", "dtd", "--seeds", "1", *argv], cwd=repo,
                              env=fake_env(repo), capture_output=True, text=True)

    local = sweep("--partition", "gpu", "--gpus-per-job", "0", "--time", "10")
    assert local.returncode == 2
    assert "--partition, --gpus-per-job, --time: only with --executor slurm" in local.stderr
    assert "--gpus is for --executor local" in sweep("--executor", "slurm", "--gpus", "0").stderr
    no_time = sweep("--executor", "slurm", "--gpus-per-job", "0")
    assert no_time.returncode == 2 and "--time MINUTES is required" in no_time.stderr
    assert recorded_calls(repo) == []
