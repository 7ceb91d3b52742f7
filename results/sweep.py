"""The job plan of a sweep: methods x protocols x datasets x seeds x shots.

Each job is one call of a script in scripts/<method>/, so a sweep does exactly what the same
commands typed by hand would do. The plan is shared by the two executors: the local runner
(results/sweep_local.py) runs the jobs on this machine, the Slurm executor
(results/sweep_slurm.py) submits them to a cluster. A job whose results.json exists is skipped
(the script itself says so under DRY_RUN=1); a test job depends on the training job whose model
it loads.
"""
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from typing import Optional

from results.benchmarks import CROSS_DATASET_TARGETS, DG_TARGETS, ELEVEN_DATASETS

PROTOCOLS = ("base2new", "few_shot", "cross_dataset", "dg")
MARKER_NAME = "results.json"

# Job states.
WAITING, RUNNING, DONE, SKIPPED, FAILED, BLOCKED = (
    "waiting", "running", "done", "skipped", "failed", "blocked")


@dataclass
class Job:
    method: str
    script: str                      # e.g. "base2new_train"
    args: list                       # positional script arguments
    opts: list = field(default_factory=list)
    depends_on: Optional[str] = None  # name of the job whose model this one loads
    output_dir: str = ""
    state: str = WAITING
    returncode: Optional[int] = None
    log_path: str = ""
    started: Optional[float] = None  # time.monotonic() at start and end of a local run
    ended: Optional[float] = None

    @property
    def name(self):
        return "/".join([self.method, self.script] + [str(a) for a in self.args])

    def script_path(self, repo):
        return os.path.join(repo, "scripts", self.method, f"{self.script}.sh")

    def command(self, repo):
        return ["bash", self.script_path(repo)] + [str(a) for a in self.args] + list(self.opts)


def available_methods(repo):
    scripts = os.path.join(repo, "scripts")
    if not os.path.isdir(scripts):
        return []
    return sorted(m for m in os.listdir(scripts)
                  if os.path.isfile(os.path.join(scripts, m, "method.sh")))


def is_training_free(repo, method):
    """True when scripts/<method>/method.sh sets TRAINING_FREE=1 (tests need no trained model)."""
    with open(os.path.join(repo, "scripts", method, "method.sh"), encoding="utf-8") as handle:
        return any(re.match(r"\s*TRAINING_FREE=1\b", line) for line in handle)


def plan_jobs(repo, methods, protocols, datasets=ELEVEN_DATASETS, seeds=(1, 2, 3), shots=(16,),
              opts=()):
    """The job list, in a sensible run order, without duplicates.

    ``datasets`` apply to base2new and few_shot; cross_dataset evaluates those of them that
    are cross-dataset targets (all but ImageNet); dg evaluates the four ImageNet variants.
    """
    known = available_methods(repo)
    for method in methods:
        if method not in known:
            raise ValueError(f"Unknown method '{method}': no scripts/{method}/method.sh. "
                             f"Available: {', '.join(known) or 'none'}.")
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise ValueError(f"Unknown protocol '{protocol}'. Choose from: {', '.join(PROTOCOLS)}.")
    jobs, names = [], set()

    def add(job):
        if job.name not in names:
            names.add(job.name)
            jobs.append(job)
        return job.name

    for method in methods:
        free = is_training_free(repo, method)
        for protocol in protocols:
            for seed in seeds:
                if protocol == "base2new":
                    for dataset in datasets:
                        train = add(Job(method, "base2new_train", [dataset, seed], list(opts)))
                        add(Job(method, "base2new_test", [dataset, seed], list(opts),
                                depends_on=None if free else train))
                elif protocol == "few_shot":
                    for dataset in datasets:
                        for k in shots:
                            add(Job(method, "few_shot", [dataset, seed, k], list(opts)))
                else:
                    targets = ([d for d in datasets if d in CROSS_DATASET_TARGETS]
                               if protocol == "cross_dataset" else list(DG_TARGETS))
                    train = add(Job(method, "xd_train", [seed], list(opts)))
                    for dataset in targets:
                        add(Job(method, "xd_test", [dataset, seed], list(opts),
                                depends_on=None if free else train))
    return jobs


def resolve_job(job, repo, env):
    """Ask the script itself (DRY_RUN=1) for the job's output folder and status."""
    result = subprocess.run(job.command(repo), env=dict(env, DRY_RUN="1"), cwd=repo,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise ValueError(f"{job.name}: the script refused the job:\n{result.stderr.strip()}")
    fields = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    job.output_dir = fields.get("output_dir", "")
    if fields.get("status") == "done":
        job.state = SKIPPED
    return fields


def is_finished(output_dir):
    return bool(output_dir) and os.path.isfile(os.path.join(output_dir, MARKER_NAME))


def file_name(name):
    """A job or chain name as a file name (mudpt/few_shot/dtd/1/16: mudpt__few_shot__dtd__1__16)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", name)


def job_log_path(job, log_dir):
    """The per-job log of a sweep: the script's output, after a "$ command" first line."""
    return os.path.join(log_dir, file_name(job.name) + ".log")


def start_job(job, repo, env, log_dir):
    """Start the job's script with its output in its per-job log; returns (process, log file).

    ``env`` is the whole environment of the script; DRY_RUN is dropped so the job runs.
    """
    os.makedirs(log_dir, exist_ok=True)
    job.log_path = job_log_path(job, log_dir)
    log = open(job.log_path, "w", encoding="utf-8")
    log.write("$ " + " ".join(shlex.quote(c) for c in job.command(repo)) + "\n")
    log.flush()
    env = {k: v for k, v in env.items() if k != "DRY_RUN"}
    proc = subprocess.Popen(job.command(repo), cwd=repo, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    return proc, log


def succeeded(job, returncode):
    """A job succeeded when its script exited with 0 and the run wrote its results.json."""
    return returncode == 0 and is_finished(job.output_dir)


@dataclass
class Chain:
    """A job and the jobs that load its model, in run order: one unit of work for a cluster."""
    jobs: list

    @property
    def name(self):
        return self.jobs[0].name

    def todo(self):
        return [job for job in self.jobs if job.state != SKIPPED]


def plan_chains(jobs):
    """Group a plan into chains: each job without a dependency starts one, and every job
    joins the chain of the job it depends on (train, then its tests)."""
    chains, chain_of = [], {}
    for job in jobs:
        chain = chain_of.get(job.depends_on)
        if chain is None:
            chain = Chain([])
            chains.append(chain)
        chain.jobs.append(job)
        chain_of[job.name] = chain
    return chains


def eta_seconds(durations, remaining, running_elapsed=(), parallel=1):
    """Seconds until ``remaining`` units of work (the running ones included) are finished, at
    the mean duration of the finished ones and ``parallel`` units at a time; None before any
    unit has finished. A running unit counts as already ``elapsed`` seconds into its mean."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    work = mean * remaining - sum(min(elapsed, mean) for elapsed in running_elapsed)
    return max(0.0, work / max(1, parallel))


def format_seconds(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def format_eta(seconds):
    return "eta --:--:--" if seconds is None else f"eta {format_seconds(seconds)}"
