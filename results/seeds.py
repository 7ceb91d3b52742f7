"""Summaries over seed folders, printed exactly as CoOp's ``parse_test_res.py`` prints them.

Layout: ``DIR/<seed folder>/log.txt`` (one folder per seed), or with ``multi_exp``
``DIR/<experiment>/<seed folder>/log.txt``. Good input gives byte-identical stdout to
CoOp's script; problems (a folder without ``log.txt``, a log without a final result,
a directory without any result) are reported by name on stderr instead of crashing.
"""
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from results.logparse import LOG_NAME, TRAIN_END_SIGNALS, final_result, run_logs


@dataclass
class SeedResult:
    folder: str          # the seed folder's name, e.g. "seed1"
    log_path: str
    value: float


@dataclass
class DirectorySummary:
    directory: str
    keyword: str
    results: list = field(default_factory=list)    # SeedResult, in folder order
    problems: list = field(default_factory=list)   # (folder path, reason)
    mean: float = float("nan")
    spread: float = float("nan")                   # std (ddof 0) or the 95% CI half-width
    spread_kind: str = "std"

    @property
    def found(self):
        return bool(self.results)


def visible_entries(directory):
    """Sorted directory entries, hidden ones (leading '.') left out, as Dassl's listdir_nohidden."""
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


def mean_and_std(values):
    """Mean and population standard deviation (ddof = 0), the convention of CoOp's parser.

    numpy, as in CoOp, so the printed roundings agree to the last digit.
    """
    return float(np.mean(values)), float(np.std(values))


def ci95(values):
    """Half-width of the 95% confidence interval as CoOp computes it: 1.96 * std / sqrt(n)."""
    _, std = mean_and_std(values)
    return float(1.96 * std / np.sqrt(len(values)))


def summarise_directory(directory, keyword="accuracy", signals=None, use_ci95=False,
                        out=None, err=None):
    """Parse every seed folder under ``directory``, print CoOp's report and return a summary."""
    signals = TRAIN_END_SIGNALS if signals is None else signals
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    summary = DirectorySummary(directory=directory, keyword=keyword,
                               spread_kind="ci95" if use_ci95 else "std")

    print(f"Parsing files in {directory}", file=out)
    for name in visible_entries(directory):
        run_dir = os.path.join(directory, name)
        log_path = os.path.join(run_dir, LOG_NAME)
        if not os.path.isdir(run_dir):
            summary.problems.append((run_dir, "not a folder, ignored"))
            continue
        if not os.path.isfile(log_path):
            summary.problems.append((run_dir, f"no {LOG_NAME} (run never started, or the log was moved)"))
            continue
        log_path, value = final_result(run_dir, keyword, signals)  # a resumed run ends in a later log
        if value is None:
            wanted = " or ".join(f"'{s}'" for s in signals)
            summary.problems.append(
                (run_dir, f"{LOG_NAME}{' (nor a later log)' if len(run_logs(run_dir)) > 1 else ''} has no "
                          f"'* {keyword}: ...%' line after {wanted} "
                          "(crashed, still running, or an eval-only log: try --test-log)"))
            continue
        summary.results.append(SeedResult(folder=name, log_path=log_path, value=value))
        print(f"file: {log_path}. {keyword}: {value:.2f}%. ", file=out)

    for path, reason in summary.problems:
        print(f"Warning: skipped {path}: {reason}", file=err)

    if not summary.results:
        print(f"Error: nothing found in {directory}: no seed folder has a final "
              f"'* {keyword}: ...%' line.", file=err)
        return summary

    values = [r.value for r in summary.results]
    summary.mean, std = mean_and_std(values)
    summary.spread = ci95(values) if use_ci95 else std
    print("===", file=out)
    print(f"Summary of directory: {directory}", file=out)
    print(f"* {keyword}: {summary.mean:.2f}% +- {summary.spread:.2f}%", file=out)
    print("===", file=out)
    return summary


def layout_problem(directory, multi_exp):
    """A message when the seed logs are not at the depth the flags read (DIR/<seed>/log.txt, with
    --multi-exp DIR/<experiment>/<seed>/log.txt) but one level off; None otherwise."""
    expected = 2 if multi_exp else 1
    depth = _log_depth(directory, expected + 1)
    if depth is None or depth == expected:
        return None
    layout = "DIR/<experiment>/<seed>/log.txt" if multi_exp else "DIR/<seed>/log.txt"
    flags = "--multi-exp, which reads" if multi_exp else "the seed summary, which reads"
    if depth < expected:
        return (f"{directory} holds its seed folders directly (DIR/<seed>/log.txt), but {flags} {layout}: "
                "drop --multi-exp.")
    below = [os.path.join(directory, name) for name in visible_entries(directory)
             if _log_depth(os.path.join(directory, name), expected) == expected]
    if not multi_exp and depth == expected + 1:
        return (f"{directory} is one level too high for {flags} {layout}: its folders hold experiments "
                f"of seed folders, so add --multi-exp, or pass one of {', '.join(below)}.")
    return (f"{directory} is one level too high for {flags} {layout}: pass one of {', '.join(below)}.")


def _log_depth(directory, deepest):
    """The smallest depth (1: DIR/<x>/log.txt) up to ``deepest`` at which a log.txt is, or None."""
    level = [directory]
    for depth in range(1, deepest + 1):
        level = [os.path.join(folder, name) for folder in level if os.path.isdir(folder)
                 for name in visible_entries(folder) if os.path.isdir(os.path.join(folder, name))]
        if any(os.path.isfile(os.path.join(folder, LOG_NAME)) for folder in level):
            return depth
    return None


def summarise_experiments(directory, keyword="accuracy", signals=None, use_ci95=False,
                          out=None, err=None):
    """``--multi-exp``: one summary per experiment folder, then the mean of their means."""
    out = sys.stdout if out is None else out
    summaries = []
    for name in visible_entries(directory):
        exp_dir = os.path.join(directory, name)
        if not os.path.isdir(exp_dir):
            continue
        summaries.append(summarise_directory(exp_dir, keyword, signals, use_ci95, out, err))
    means = [s.mean for s in summaries if s.found]
    print("Average performance", file=out)
    if means:
        print(f"* {keyword}: {float(np.mean(means)):.2f}%", file=out)
    return summaries
