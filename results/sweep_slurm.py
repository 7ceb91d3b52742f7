"""The Slurm executor of a sweep: each chain of the plan is one Slurm job, submitted with submitit.

A chain is a training job and the test jobs that load its model (or a lone job). One Slurm job
per chain rather than one per job with Slurm dependencies: the tests are short evaluations of the
model the training has just written, so running them in the same allocation spares a second wait
in the queue, and "a failed training blocks its tests" stays in one place (the chain stops at its
first failure). A job runs the same script commands as the local runner, in the repository
root, each with its per-job log in the sweep's log folder.

Bookkeeping lives in LOG_DIR/slurm/: state.json (the Slurm job id of each submitted chain,
written only by the submitting side, atomically), chains/<chain>.json (written by the running
job: start, current job, end, the job that failed) and submitit/ (submitit's pickles and the
Slurm logs). Whether a run is finished is decided as everywhere else: its results.json. So a
chain is done when all its runs are; pending or running while Slurm says so; failed otherwise
(crashed, cancelled, timed out), and it is submitted again only on request. A preempted job
is requeued by submitit and runs its chain again from the start; the scripts
skip the runs that finished, so nothing finished is trained twice. A job that hits its time
limit fails: raise --time, then --resubmit-failed.
"""
import getpass
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from results.sweep import (BLOCKED, DONE, FAILED, RUNNING, eta_seconds, file_name, format_eta,
                           is_finished, job_log_path, start_job, succeeded)

PENDING, NOT_SUBMITTED = "pending", "not submitted"
# squeue's job states (%T), as this module sees them; any other state is a finished job.
SLURM_PENDING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"}
SLURM_RUNNING = {"RUNNING", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING",
                 "SUSPENDED", "STOPPED"}
# The environment variables the scripts read (scripts/README.md), passed on to the job.
SCRIPT_VARIABLES = ("DATA", "OUTPUT", "CLIP_PATH", "PYTHON", "CFG", "LOAD_EPOCH")


class SlurmError(RuntimeError):
    """Slurm could not be used (no client commands, a refused submission, no controller)."""


@dataclass
class SlurmOptions:
    time_min: int                    # wall-clock limit of one chain
    gpus_per_job: int = 1            # 0: a CPU-only job, no GPU resource requested
    partition: Optional[str] = None  # None: the cluster's default partition
    cpus_per_job: Optional[int] = None
    mem: Optional[str] = None        # Slurm syntax: 32G, 64000M
    account: Optional[str] = None
    qos: Optional[str] = None
    extra: dict = field(default_factory=dict)  # any other sbatch option, e.g. constraint=a100

    def __post_init__(self):
        if self.time_min <= 0:
            raise ValueError(f"--time must be a number of minutes > 0, got {self.time_min}.")
        if self.gpus_per_job < 0:
            raise ValueError(f"--gpus-per-job must be >= 0 (0: CPU only), got {self.gpus_per_job}.")
        if self.cpus_per_job is not None and self.cpus_per_job <= 0:
            raise ValueError(f"--cpus-per-job must be > 0, got {self.cpus_per_job}.")
        if self.mem is not None and not re.fullmatch(r"\d+[KMGT]?", self.mem):
            raise ValueError(f"--mem takes Slurm's syntax, e.g. 32G or 64000M; got '{self.mem}'.")

    def sbatch_parameters(self, repo):
        """submitit's SlurmExecutor parameters. The job starts in the repository root, so that
        the pickled chain function (results.sweep_slurm.run_chain) imports there."""
        extra = dict(self.extra, chdir=repo)
        if self.mem:
            extra["mem"] = self.mem
        params = dict(time=self.time_min, stderr_to_stdout=True, additional_parameters=extra)
        if self.gpus_per_job > 0:
            params["gpus_per_node"] = self.gpus_per_job
        for name, value in (("partition", self.partition), ("cpus_per_task", self.cpus_per_job),
                            ("account", self.account), ("qos", self.qos)):
            if value is not None:
                params[name] = value
        return params


def script_environment(env, gpus_per_job):
    """What a chain's scripts get on top of the job's own environment: the script variables of
    the submitting side and NPROC, so that a job with N > 1 GPUs runs each run through torchrun
    on its N GPUs (scripts/common/run.sh)."""
    updates = {name: env[name] for name in SCRIPT_VARIABLES if env.get(name)}
    updates["NPROC"] = str(max(1, gpus_per_job))
    return updates


def make_executor(folder, options, repo):
    import submitit  # only the Slurm executor needs it

    try:
        executor = submitit.SlurmExecutor(folder=folder)
    except RuntimeError:
        raise SlurmError("the Slurm client commands (srun, sbatch, squeue) are not on the PATH: "
                         "run the sweep on a login node of the cluster, or start a one-node "
                         "Slurm here with `bash tools/slurm_local.sh start`.") from None
    executor.update_parameters(**options.sbatch_parameters(repo))
    return executor


def slurm_queue():
    """{job id: Slurm state} of this user's jobs the controller still knows (recently finished
    ones included)."""
    try:
        result = subprocess.run(["squeue", "--noheader", "--format=%i|%T", "--states=all",
                                 f"--user={getpass.getuser()}"], capture_output=True, text=True)
    except FileNotFoundError:
        raise SlurmError("squeue is not on the PATH: run this on a login node of the cluster "
                         "(or start a local one: bash tools/slurm_local.sh start).") from None
    if result.returncode != 0:
        raise SlurmError(f"squeue failed: {result.stderr.strip()} (is slurmctld up? "
                         "For the local cluster: bash tools/slurm_local.sh status)")
    return dict(line.strip().split("|", 1) for line in result.stdout.splitlines() if "|" in line)


def _read_json(path):
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _write_json(path, obj):
    from dassl.utils import atomic_write_text  # imports torch: only when something is written

    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def chain_record_path(log_dir, chain_name):
    return os.path.join(log_dir, "slurm", "chains", file_name(chain_name) + ".json")


def run_chain(jobs, repo, log_dir, env_updates, record_path):
    """The body of one Slurm job: the chain's scripts in order, stopping at the first failure.

    The job's own environment (with the GPUs Slurm gave it in CUDA_VISIBLE_DEVICES) plus
    ``env_updates``; GPU and GPUS_PER_RUN are dropped, as they would override those.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("GPU", "GPUS_PER_RUN")}
    env.update(env_updates)
    record = {"job_id": os.environ.get("SLURM_JOB_ID", ""), "start": time.time()}
    for job in jobs:
        print(f"Running {job.name}; log: {job_log_path(job, log_dir)}", flush=True)
        proc, log = start_job(job, repo, env, log_dir)
        record["current"] = job.name
        _write_json(record_path, record)  # while the script starts, not before it
        returncode = proc.wait()
        log.close()
        if not succeeded(job, returncode):
            record.update(end=time.time(), failed=job.name)
            _write_json(record_path, record)
            raise RuntimeError(f"{job.name} failed (exit code {returncode}); log: {job.log_path}")
    record["end"] = time.time()
    _write_json(record_path, record)
    return [job.name for job in jobs]


class SlurmSweep:
    """Submits the chains of a plan and reports their state, from LOG_DIR/slurm/state.json,
    squeue and the runs' results.json."""

    def __init__(self, repo, log_dir, queue=slurm_queue):
        self.repo = repo
        self.log_dir = log_dir
        self.queue = queue
        self.state_path = os.path.join(log_dir, "slurm", "state.json")
        self.submitted = _read_json(self.state_path).get("chains", {})

    def record(self, chain):
        """The running job's record of the chain's current submission ({} if none yet)."""
        entry = self.submitted.get(chain.name)
        record = _read_json(chain_record_path(self.log_dir, chain.name)) if entry else {}
        return record if entry and record.get("job_id") == entry["job_id"] else {}

    def chain_state(self, chain, queue):
        if all(is_finished(job.output_dir) for job in chain.jobs):
            return DONE
        entry = self.submitted.get(chain.name)
        if entry is None:
            return NOT_SUBMITTED
        slurm_state = queue.get(entry["job_id"])
        if slurm_state in SLURM_PENDING:
            return PENDING
        if slurm_state in SLURM_RUNNING:
            return RUNNING
        return FAILED

    def submit(self, chains, executor, env_updates, resubmit_failed=False):
        """Submit each chain not yet submitted (and, on request, each failed one) with the
        runs it still lacks; returns the submitted chains. Finished chains are skipped."""
        queue = self.queue()
        wanted = (NOT_SUBMITTED, FAILED) if resubmit_failed else (NOT_SUBMITTED,)
        to_submit = [chain for chain in chains if self.chain_state(chain, queue) in wanted]
        if to_submit:
            # Once before the first sbatch: the folder is writable, and the writer's slow first
            # import (torch) does not hold back the second job.
            _write_json(self.state_path, {"chains": self.submitted})
        for chain in to_submit:
            todo = [job for job in chain.jobs if not is_finished(job.output_dir)]
            executor.update_parameters(job_name=chain.name)
            try:
                slurm_job = executor.submit(run_chain, todo, self.repo, self.log_dir, env_updates,
                                            chain_record_path(self.log_dir, chain.name))
            except Exception as error:  # submitit reports sbatch's refusal as an exception
                raise SlurmError(f"sbatch refused {chain.name}: {error}") from None
            self.submitted[chain.name] = {"job_id": str(slurm_job.job_id),
                                          "submitted": time.time(),
                                          "slurm_log": str(slurm_job.paths.stdout),
                                          "jobs": [job.name for job in todo]}
            # Saved after every submission: an interrupted sweep never submits a chain twice.
            _write_json(self.state_path, {"chains": self.submitted})
        return to_submit

    def job_rows(self, chains, queue):
        """(job, state, Slurm job id, log) per job; the log of a job that failed before it
        could write its own is the Slurm job's log (time limit, cancellation, node failure)."""
        rows = []
        for chain in chains:
            state = self.chain_state(chain, queue)
            entry = self.submitted.get(chain.name, {})
            record = self.record(chain)
            blame = record.get("failed")
            for job in chain.jobs:
                own_log = job_log_path(job, self.log_dir)
                if is_finished(job.output_dir):
                    job_state, log = DONE, own_log if os.path.isfile(own_log) else ""
                elif state == RUNNING:
                    now = job.name == record.get("current")
                    job_state, log = (RUNNING, own_log) if now else (PENDING, "")
                elif state == FAILED:
                    if blame is None:  # the job ended without reaching a verdict: Slurm's log
                        blame, own_log = job.name, entry.get("slurm_log", "")
                    job_state = FAILED if job.name == blame else BLOCKED
                    log = own_log if job_state == FAILED else ""
                else:
                    job_state, log = state, ""
                rows.append((job.name, job_state, entry.get("job_id", ""), log))
        return rows

    def eta(self, chains, states, now=None):
        """Seconds left at the current parallelism, from the mean time of the chains that
        finished (their jobs' records); None before one has."""
        now = time.time() if now is None else now
        durations, running = [], []
        for chain, state in zip(chains, states):
            record = self.record(chain)
            if state == DONE and "end" in record and "failed" not in record:
                durations.append(record["end"] - record["start"])
            elif state == RUNNING and "start" in record:
                running.append(now - record["start"])
        remaining = states.count(PENDING) + states.count(RUNNING)
        return eta_seconds(durations, remaining, running, max(1, states.count(RUNNING)))

    def summary(self, chains, states):
        counts = " | ".join(f"{name} {states.count(name)}"
                            for name in (DONE, RUNNING, PENDING, FAILED, NOT_SUBMITTED))
        return f"{len(chains)} Slurm jobs: {counts} | {format_eta(self.eta(chains, states))}"

    def status(self, chains):
        """The status table (one row per job) and its summary line; and the chains' states."""
        from tabulate import tabulate

        queue = self.queue()
        states = [self.chain_state(chain, queue) for chain in chains]
        table = tabulate(self.job_rows(chains, queue),
                         headers=["job", "state", "slurm job", "log"], tablefmt="simple")
        return table + "\n" + self.summary(chains, states), states

    def wait(self, chains, poll_seconds=30, stream=None):
        """Poll until no chain is pending or running, printing the summary when it changes."""
        stream = sys.stdout if stream is None else stream
        last = None
        while True:
            queue = self.queue()
            states = [self.chain_state(chain, queue) for chain in chains]
            if states != last:
                stream.write(self.summary(chains, states) + "\n")
                stream.flush()
                last = states
            if PENDING not in states and RUNNING not in states:
                return states
            time.sleep(poll_seconds)
