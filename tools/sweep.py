"""Run the experiment scripts over a grid of methods, protocols, datasets, seeds and shots.

    python tools/sweep.py --methods mudpt coop --protocols base2new --seeds 1 2 3 --gpus 0,1
    python tools/sweep.py --methods mudpt --protocols few_shot --shots 1 2 4 8 16 --dry-run
    python tools/sweep.py --methods zsclip --datasets dtd -- DATALOADER.NUM_WORKERS 0

Everything after "--" is passed to every script as KEY VALUE options. DATA, CLIP_PATH,
OUTPUT and PYTHON are read by the scripts from the environment (see scripts/README.md);
GPUS=0,1 works like --gpus. Per-job logs go to OUTPUT/sweep_logs unless --log-dir is given.
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from results.benchmarks import ELEVEN_DATASETS  # noqa: E402
from results.sweep import PROTOCOLS, SKIPPED, plan_jobs, resolve_job, run_jobs  # noqa: E402


def parse_gpus(text):
    if not text:
        return []
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    for gpu in gpus:
        if not gpu.isdigit():
            raise ValueError(f"--gpus/GPUS must be a comma-separated list of device ids "
                             f"such as 0,1; got '{text}'.")
    return gpus


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
    parser.add_argument("--gpus", default=os.environ.get("GPUS", ""),
                        help="comma-separated GPU ids, one job per GPU at a time "
                             "(default: $GPUS; empty: one job at a time)")
    parser.add_argument("--log-dir", help="per-job logs (default: OUTPUT/sweep_logs)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the jobs with their status and commands; run nothing")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="-- KEY VALUE ... passed to every job")
    return parser


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
    try:
        gpus = parse_gpus(args.gpus)
        jobs = plan_jobs(REPO, args.methods, args.protocols, args.datasets, args.seeds,
                         args.shots, opts)
        for job in jobs:
            resolve_job(job, REPO, env)
    except ValueError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2

    if args.dry_run:
        for job in jobs:
            status = "done (skip)" if job.state == SKIPPED else "to run"
            after = f"  [after {job.depends_on}]" if job.depends_on else ""
            print(f"{job.name}: {status} -> {job.output_dir}{after}")
        todo = sum(job.state != SKIPPED for job in jobs)
        print(f"{len(jobs)} jobs, {todo} to run, {len(jobs) - todo} already finished.")
        return 0

    output_root = os.path.abspath(env.get("OUTPUT") or os.path.join(REPO, "output"))
    log_dir = args.log_dir or os.path.join(output_root, "sweep_logs")
    ok = run_jobs(jobs, REPO, env, log_dir, gpus)
    print(f"Per-job logs: {log_dir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
