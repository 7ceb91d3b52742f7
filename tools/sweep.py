"""Run the experiment scripts over a grid of methods, protocols, datasets, seeds and shots.

    python tools/sweep.py --methods mudpt coop --protocols base2new --seeds 1 2 3 --gpus 0,1
    python tools/sweep.py --methods mudpt --protocols few_shot --shots 1 2 4 8 16 --dry-run
    python tools/sweep.py --methods zsclip --datasets dtd -- DATALOADER.NUM_WORKERS 0
    python tools/sweep.py --executor slurm --partition gpu --gpus-per-job 1 --time 240
    python tools/sweep.py --executor slurm --status          (the same grid options)

Everything after "--" is passed to every script as KEY VALUE options. DATA, CLIP_PATH,
OUTPUT and PYTHON are read by the scripts from the environment (see scripts/README.md);
GPUS=0,1 works like --gpus. Per-job logs go to OUTPUT/sweep_logs unless --log-dir is given.

With --executor slurm, each training job and the test jobs that load its model form one Slurm
job, submitted through submitit; finished runs are skipped, running ones are not submitted
twice, failed ones are submitted again with --resubmit-failed. Its bookkeeping and the Slurm
logs are in LOG_DIR/slurm/.
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from results.benchmarks import ELEVEN_DATASETS  # noqa: E402
from results.sweep import (FAILED, PROTOCOLS, SKIPPED, plan_chains, plan_jobs,  # noqa: E402
                           resolve_job)
from results.sweep_local import run_jobs  # noqa: E402
from results.sweep_slurm import (SlurmError, SlurmOptions, SlurmSweep,  # noqa: E402
                                 make_executor, script_environment)

SLURM_ONLY = ("partition", "gpus_per_job", "time", "cpus_per_job", "mem", "account", "qos",
              "slurm_option", "resubmit_failed", "status", "wait")


def parse_gpus(text):
    if not text:
        return []
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    for gpu in gpus:
        if not gpu.isdigit():
            raise ValueError(f"--gpus/GPUS must be a comma-separated list of device ids "
                             f"such as 0,1; got '{text}'.")
    return gpus


def parse_slurm_options(pairs):
    extra = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--slurm-option takes KEY=VALUE (an sbatch option without its "
                             f"dashes, e.g. constraint=a100); got '{pair}'.")
        extra[key] = value
    return extra


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--methods", nargs="+", default=["mudpt"],
                        help="folders of scripts/ (default: mudpt)")
    parser.add_argument("--protocols", nargs="+", default=["base2new"], choices=PROTOCOLS,
                        help="default: base2new")
    parser.add_argument("--datasets", nargs="+", default=list(ELEVEN_DATASETS),
                        help="datasets of base2new/few_shot, and the cross_dataset targets "
                             "(default: the 11 benchmarks)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--shots", nargs="+", type=int, default=[16], help="few_shot only")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local",
                        help="local: run here (default); slurm: submit to a Slurm cluster")
    parser.add_argument("--log-dir", help="per-job logs (default: OUTPUT/sweep_logs)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the jobs with their status and commands; run nothing")
    local = parser.add_argument_group("local executor")
    local.add_argument("--gpus", help="comma-separated GPU ids, one job per GPU at a time "
                                      "(default: $GPUS; empty: one job at a time)")
    slurm = parser.add_argument_group("slurm executor (one Slurm job per train-then-test chain)")
    slurm.add_argument("--partition", help="default: the cluster's default partition")
    slurm.add_argument("--gpus-per-job", type=int,
                       help="GPUs of one job (default 1; 0: CPU only). With N > 1 each run uses "
                            "torchrun on the N GPUs (NPROC=N)")
    slurm.add_argument("--time", type=int, metavar="MINUTES",
                       help="wall-clock limit of one job (required to submit)")
    slurm.add_argument("--cpus-per-job", type=int, help="default: the cluster's default")
    slurm.add_argument("--mem", help="memory of one job in Slurm's syntax, e.g. 32G")
    slurm.add_argument("--account")
    slurm.add_argument("--qos")
    slurm.add_argument("--slurm-option", action="append", metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. constraint=a100 (repeatable)")
    slurm.add_argument("--resubmit-failed", action="store_true",
                       help="submit again the jobs that failed, were cancelled or timed out")
    slurm.add_argument("--status", action="store_true",
                       help="print the state of every job with its log; submit nothing")
    slurm.add_argument("--wait", action="store_true",
                       help="(after submitting) wait until no job is pending or running")
    slurm.add_argument("--poll-seconds", type=float, default=30.0,
                       help="how often --wait asks Slurm (default: 30)")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="-- KEY VALUE ... passed to every job")
    return parser


def check_executor_options(args):
    if args.executor == "local":
        given = [name for name in SLURM_ONLY
                 if getattr(args, name) is not None and getattr(args, name) is not False]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(f"{flags}: only with --executor slurm.")
    elif args.gpus:
        raise ValueError("--gpus is for --executor local; a Slurm job gets its GPUs from "
                         "--gpus-per-job.")


def list_jobs(jobs):
    for job in jobs:
        status = "done (skip)" if job.state == SKIPPED else "to run"
        after = f"  [after {job.depends_on}]" if job.depends_on else ""
        print(f"{job.name}: {status} -> {job.output_dir}{after}")
    todo = sum(job.state != SKIPPED for job in jobs)
    print(f"{len(jobs)} jobs, {todo} to run, {len(jobs) - todo} already finished.")


def run_local(jobs, env, log_dir, gpus):
    ok = run_jobs(jobs, REPO, env, log_dir, gpus)
    print(f"Per-job logs: {log_dir}")
    return 0 if ok else 1


def run_slurm(args, jobs, env, log_dir):
    chains = plan_chains(jobs)
    sweep = SlurmSweep(REPO, log_dir)
    if not args.status:
        if args.time is None:
            raise ValueError("--time MINUTES is required to submit: the wall-clock limit of "
                             "one Slurm job (a training run and its tests).")
        options = SlurmOptions(time_min=args.time, gpus_per_job=args.gpus_per_job,
                               partition=args.partition, cpus_per_job=args.cpus_per_job,
                               mem=args.mem, account=args.account, qos=args.qos,
                               extra=parse_slurm_options(args.slurm_option))
        executor = make_executor(os.path.join(log_dir, "slurm", "submitit"), options, REPO)
        submitted = sweep.submit(chains, executor, script_environment(env, options.gpus_per_job),
                                 resubmit_failed=args.resubmit_failed)
        print(f"Submitted {len(submitted)} Slurm job(s) for {len(chains)} chain(s) "
              f"(bookkeeping: {os.path.join(log_dir, 'slurm')}).")
    if args.wait:
        try:
            sweep.wait(chains, args.poll_seconds)
        except KeyboardInterrupt:
            print("Stopped waiting; the Slurm jobs go on (see --status).")
    text, states = sweep.status(chains)
    print(text)
    if FAILED in states:
        print("Failed jobs are not submitted again unless you add --resubmit-failed.")
        return 1
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    opts = args.opts[1:] if args.opts[:1] == ["--"] else args.opts
    if len(opts) % 2:
        print(f"Error: options after '--' must be KEY VALUE pairs, got: {' '.join(opts)}",
              file=sys.stderr)
        return 2
    env = dict(os.environ)
    # Scripts run from the repo root: make the caller's relative paths absolute first.
    for name in ("DATA", "OUTPUT", "CLIP_PATH"):
        if env.get(name):
            env[name] = os.path.abspath(env[name])
    output_root = os.path.abspath(env.get("OUTPUT") or os.path.join(REPO, "output"))
    log_dir = os.path.abspath(args.log_dir or os.path.join(output_root, "sweep_logs"))
    try:
        check_executor_options(args)
        if args.executor == "slurm" and args.gpus_per_job is None:
            args.gpus_per_job = 1
        gpus = parse_gpus(args.gpus or env.get("GPUS", "")) if args.executor == "local" else []
        jobs = plan_jobs(REPO, args.methods, args.protocols, args.datasets, args.seeds,
                         args.shots, opts)
        for job in jobs:
            resolve_job(job, REPO, env)
        if args.dry_run:
            list_jobs(jobs)
            return 0
        if args.executor == "local":
            return run_local(jobs, env, log_dir, gpus)
        return run_slurm(args, jobs, env, log_dir)
    except ValueError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    except SlurmError as error:
        print(f"Error: Slurm: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
