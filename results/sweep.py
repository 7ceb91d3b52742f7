"""Run a grid of experiment scripts: methods x protocols x datasets x seeds x shots.

Each job is one call of a script in scripts/<method>/, so a sweep does exactly what the same
commands typed by hand would do. Jobs are spread over GPUs (one job per GPU at a time, through
CUDA_VISIBLE_DEVICES) or run one at a time. A job whose results.json exists is skipped; an
unfinished one is run again (the script moves its stale log aside). A test job waits for the
training job it loads, and is not started if that one failed.
"""
import os
import re
import shlex
import subprocess
import sys
import time
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


def _log_name(job):
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", job.name) + ".log"


def _format_seconds(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """One status line: rewritten in place on a terminal, one line per event otherwise."""

    def __init__(self, total, stream=None):
        self.total = total
        self.stream = sys.stdout if stream is None else stream
        self.start = time.monotonic()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = 0

    def line(self, jobs):
        counts = {s: 0 for s in (RUNNING, DONE, SKIPPED, FAILED, BLOCKED)}
        for job in jobs:
            if job.state in counts:
                counts[job.state] += 1
        finished = counts[DONE] + counts[SKIPPED] + counts[FAILED] + counts[BLOCKED]
        running = [j.name for j in jobs if j.state == RUNNING]
        text = (f"[{finished}/{self.total}] running {counts[RUNNING]} | done {counts[DONE]} | "
                f"skipped {counts[SKIPPED]} | failed {counts[FAILED]} | blocked {counts[BLOCKED]}"
                f" | elapsed {_format_seconds(time.monotonic() - self.start)}")
        if running:
            text += " | now: " + ", ".join(running)
        return text

    def show(self, jobs):
        text = self.line(jobs)
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text):
        if self.tty and self.width:
            self.stream.write("\n")
            self.width = 0
        self.stream.write(text + "\n")
        self.stream.flush()


def run_jobs(jobs, repo, env, log_dir, gpus=(), poll_seconds=0.2, stream=None):
    """Run the jobs; returns True when none failed or was blocked.

    ``gpus``: device ids, one job per id at a time; empty: one job at a time with the
    environment's own CUDA_VISIBLE_DEVICES.
    """
    os.makedirs(log_dir, exist_ok=True)
    progress = Progress(len(jobs), stream)
    by_name = {job.name: job for job in jobs}
    slots = {slot: None for slot in (list(gpus) if gpus else [None])}
    processes = {}

    def dependency_state(job):
        if job.depends_on is None:
            return DONE
        return by_name[job.depends_on].state if job.depends_on in by_name else DONE

    def start(job, slot):
        job_env = dict(env)
        job_env.pop("DRY_RUN", None)
        if slot is not None:
            job_env["CUDA_VISIBLE_DEVICES"] = str(slot)
            job_env.pop("GPU", None)  # the script would override CUDA_VISIBLE_DEVICES with it
        job.log_path = os.path.join(log_dir, _log_name(job))
        log = open(job.log_path, "w", encoding="utf-8")
        log.write("$ " + " ".join(shlex.quote(c) for c in job.command(repo)) + "\n")
        log.flush()
        proc = subprocess.Popen(job.command(repo), cwd=repo, env=job_env, stdout=log,
                                stderr=subprocess.STDOUT)
        processes[job.name] = (proc, log)
        job.state = RUNNING
        slots[slot] = job

    progress.show(jobs)
    try:
        while True:
            changed = False
            for slot, job in list(slots.items()):
                if job is None:
                    continue
                proc, log = processes[job.name]
                if proc.poll() is None:
                    continue
                log.close()
                job.returncode = proc.returncode
                job.state = DONE if proc.returncode == 0 and is_finished(job.output_dir) else FAILED
                if job.state == FAILED:
                    progress.message(f"FAILED {job.name} (exit code {proc.returncode}); "
                                     f"log: {job.log_path}")
                slots[slot] = None
                changed = True
            for job in jobs:
                if job.state == WAITING and dependency_state(job) in (FAILED, BLOCKED):
                    job.state = BLOCKED
                    progress.message(f"BLOCKED {job.name}: {job.depends_on} did not finish")
                    changed = True
            for slot in [s for s, j in slots.items() if j is None]:
                ready = next((j for j in jobs if j.state == WAITING
                              and dependency_state(j) in (DONE, SKIPPED)), None)
                if ready is None:
                    break
                start(ready, slot)
                changed = True
            if changed:
                progress.show(jobs)
            if all(j is None for j in slots.values()) and not any(
                    j.state == WAITING for j in jobs):
                break
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        for proc, log in processes.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
            log.close()
        progress.message("Interrupted: running jobs were stopped; run the sweep again to "
                         "resume (finished runs are skipped).")
        raise
    if progress.tty:
        progress.stream.write("\n")
    return not any(j.state in (FAILED, BLOCKED) for j in jobs)
