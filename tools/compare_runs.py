"""Compare two runs from their logs and point at the first divergence.

    python tools/compare_runs.py output/dtd/MuDPT/cfg_16shots/seed1 reference/log.txt

Each run is a log.txt or the output folder holding it, from this toolbox or from the original
Dassl engine (CoOp, CoCoOp, MaPLe, ...). Compared, in the order a run goes: config keys, dataset
summary, few-shot image-list hash, transforms, model facts (run_facts.json beside the log, else
the lines the log printed), LR per epoch, loss per printed iteration, final accuracy.
Exit status: 0 the runs match, 1 they differ, 2 bad input.
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from results.compare import compare_logs, report  # noqa: E402
from results.logparse import LOG_NAME, read_run_log  # noqa: E402
from results.run_facts import RunFactsError  # noqa: E402


class BadInput(Exception):
    pass


def log_path(run):
    """The log.txt of a run given as a file or as its output folder."""
    if os.path.isdir(run):
        path = os.path.join(run, LOG_NAME)
        if not os.path.isfile(path):
            raise BadInput(f'"{run}" holds no {LOG_NAME}; pass a run\'s output folder or its log file.')
        return path
    if not os.path.isfile(run):
        raise BadInput(f'"{run}" does not exist; pass a run\'s output folder or its {LOG_NAME}.')
    return run


def read_log(run):
    path = log_path(run)
    try:
        log = read_run_log(path)
    except OSError as exc:
        raise BadInput(f'cannot read "{path}" ({exc.strerror}).') from exc
    except RunFactsError as exc:
        raise BadInput(str(exc)) from exc
    if not (log.config or log.iterations or log.accuracy is not None):
        raise BadInput(f'"{path}" is not the log of a run: it has no "** Config **" block, no '
                       '"epoch [..]" lines and no final "* accuracy" line.')
    return log


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", metavar="RUN_A", help="log.txt or output folder")
    parser.add_argument("run_b", metavar="RUN_B", help="log.txt or output folder")
    args = parser.parse_args(argv)
    try:
        a, b = read_log(args.run_a), read_log(args.run_b)
    except BadInput as exc:
        print(f"compare_runs.py: error: {exc}", file=sys.stderr)
        return 2
    sections = compare_logs(a, b)
    print(report(a, b, sections), end="")
    return 1 if any(s.differs for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
