"""The local executor of a sweep: runs the planned jobs on this machine.

Jobs are spread over GPUs (one job per GPU at a time, through CUDA_VISIBLE_DEVICES) or run one
at a time. A test job waits for the training job it loads, and is not started if that one
failed. An unfinished run is run again (its script moves the stale log aside).
"""
import sys
import time

from results.sweep import (BLOCKED, DONE, FAILED, RUNNING, SKIPPED, WAITING, eta_seconds,
                           format_eta, format_seconds, start_job, succeeded)


class Progress:
    """One status line: rewritten in place on a terminal, one line per event otherwise."""

    def __init__(self, total, parallel=1, stream=None):
        self.total = total
        self.parallel = parallel
        self.stream = sys.stdout if stream is None else stream
        self.start = time.monotonic()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = 0

    def eta(self, jobs, now):
        """From the jobs that ran to the end here (skipped ones took no time)."""
        durations = [j.ended - j.started for j in jobs if j.state == DONE]
        running = [now - j.started for j in jobs if j.state == RUNNING]
        remaining = len(running) + sum(j.state == WAITING for j in jobs)
        return eta_seconds(durations, remaining, running, self.parallel)

    def line(self, jobs):
        counts = {s: 0 for s in (RUNNING, DONE, SKIPPED, FAILED, BLOCKED)}
        for job in jobs:
            if job.state in counts:
                counts[job.state] += 1
        finished = counts[DONE] + counts[SKIPPED] + counts[FAILED] + counts[BLOCKED]
        running = [j.name for j in jobs if j.state == RUNNING]
        now = time.monotonic()
        text = (f"[{finished}/{self.total}] running {counts[RUNNING]} | done {counts[DONE]} | "
                f"skipped {counts[SKIPPED]} | failed {counts[FAILED]} | blocked {counts[BLOCKED]}"
                f" | elapsed {format_seconds(now - self.start)}"
                f" | {format_eta(self.eta(jobs, now))}")
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
    slots = {slot: None for slot in (list(gpus) if gpus else [None])}
    progress = Progress(len(jobs), len(slots), stream)
    by_name = {job.name: job for job in jobs}
    processes = {}

    def dependency_state(job):
        if job.depends_on is None:
            return DONE
        return by_name[job.depends_on].state if job.depends_on in by_name else DONE

    def start(job, slot):
        job_env = dict(env)
        if slot is not None:
            job_env["CUDA_VISIBLE_DEVICES"] = str(slot)
            job_env.pop("GPU", None)  # the script would override CUDA_VISIBLE_DEVICES with it
        processes[job.name] = start_job(job, repo, job_env, log_dir)
        job.state = RUNNING
        job.started = time.monotonic()
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
                job.ended = time.monotonic()
                job.returncode = proc.returncode
                job.state = DONE if succeeded(job, proc.returncode) else FAILED
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
