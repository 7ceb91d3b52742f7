"""Summarise test results over seeds, CoOp style, and build the paper's tables.

Seed summary (same flags and output lines as CoOp's parse_test_res.py):

    python parse_test_res.py output/base2new/train_base/dtd/shots_16/MuDPT/vit_b16_bz4_ep10_nctx4_depth12
    python parse_test_res.py output/base2new/test_new/dtd/shots_16/MuDPT/vit_b16_bz4_ep10_nctx4_depth12 --test-log
    python parse_test_res.py DIR --ci95           # 95% confidence interval instead of the std
    python parse_test_res.py DIR --multi-exp      # DIR/<experiment>/<seed>/log.txt
    python parse_test_res.py DIR --csv seeds.csv --json seeds.json

Paper tables from everything under an output root:

    python parse_test_res.py --tables output [--table base2new] [--paper] [--seeds 1 2 3]
                             [--outlier 10] [--shots 16] [--csv tables.csv] [--latex tables.tex]
                             [--plot fig5.png]

When the output root holds no runs itself, the output roots up to two levels below it are used
(e.g. released logs laid out as <logs>/<method>/base2new/...), and named on stderr.
"""
import argparse
import json
import os
import sys

from results.logparse import end_signals


def atomic_write_text(path, text):
    # imported on use: the engine package loads torch, which plain parsing does not need
    from dassl.utils import atomic_write_text as write
    write(path, text)


def build_parser():
    parser = argparse.ArgumentParser(
        description="Summarise seed results (CoOp-compatible) or build the paper tables.")
    parser.add_argument("directory", nargs="?", help="folder whose sub-folders are seed runs")
    parser.add_argument("--directory", dest="directory_option", metavar="DIRECTORY",
                        help="same as the positional directory (MuDPT's spelling)")
    parser.add_argument("--ci95", action="store_true", help=r"compute 95%% confidence interval")
    parser.add_argument("--test-log", "--test_log", dest="test_log", action="store_true",
                        help="parse test-only logs (end signal '=> result')")
    parser.add_argument("--multi-exp", "--multi_exp", dest="multi_exp", action="store_true",
                        help="parse multiple experiments")
    parser.add_argument("--keyword", default="accuracy", type=str,
                        help="which keyword to extract")
    parser.add_argument("--csv", metavar="FILE", help="also write the numbers as CSV")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON "
                        "(seed summary mode)")
    tables = parser.add_argument_group("paper tables")
    tables.add_argument("--tables", metavar="OUTPUT_ROOT",
                        help="collect all runs under this output root and print the paper tables "
                           "(without runs of its own: the output roots up to 2 levels below it)")
    tables.add_argument("--table", action="append", metavar="NAME",
                        help="only this table: few_shot, cross_dataset, base2new, "
                             "domain_generalization (repeatable)")
    tables.add_argument("--paper", action="store_true",
                        help="add rows with the published numbers")
    tables.add_argument("--shots", type=int, default=16,
                        help="shots of the few-shot table (Table I); base-to-new, cross-dataset "
                             "and DG keep their protocol's 16")
    tables.add_argument("--seeds", type=int, nargs="+", metavar="S",
                        help="average only these seeds (default: every seed found)")
    tables.add_argument("--outlier", type=float, default=10.0, metavar="P",
                        help="flag a seed more than P points from its cell's median (default 10)")
    tables.add_argument("--all-datasets", action="store_true",
                        help="show every dataset column, also those without runs")
    tables.add_argument("--latex", metavar="FILE", help="also write the tables as LaTeX")
    tables.add_argument("--plot", metavar="FILE.png",
                        help="save a base/new/HM bar chart per dataset (Fig. 5 style)")
    return parser


def fail(message):
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(2)


def run_seed_summary(args, directory):
    from results.seeds import layout_problem, summarise_directory, summarise_experiments

    if not os.path.isdir(directory):
        fail(f"'{directory}' is not a folder. Pass the folder that holds the seed folders "
             "(e.g. .../MuDPT/vit_b16_bz4_ep10_nctx4_depth12, containing seed1, seed2, seed3).")
    problem = layout_problem(directory, args.multi_exp)
    if problem:
        fail(problem)
    signals = end_signals(args.test_log)
    if args.multi_exp:
        summaries = summarise_experiments(directory, args.keyword, signals, args.ci95)
    else:
        summaries = [summarise_directory(directory, args.keyword, signals, args.ci95)]
    if args.csv:
        lines = [f"directory,seed_folder,log,{args.keyword}"]
        for s in summaries:
            lines += [f"{s.directory},{r.folder},{r.log_path},{r.value}" for r in s.results]
        atomic_write_text(args.csv, "\n".join(lines) + "\n")
    if args.json:
        payload = [{
            "directory": s.directory, "keyword": s.keyword,
            "seeds": {r.folder: r.value for r in s.results},
            "mean": s.mean if s.found else None,
            s.spread_kind: s.spread if s.found else None,
            "n": len(s.results),
            "problems": [{"path": p, "reason": why} for p, why in s.problems],
        } for s in summaries]
        atomic_write_text(args.json, json.dumps(payload if args.multi_exp else payload[0],
                                                indent=2) + "\n")
    return 0 if all(s.found for s in summaries) else 1


def report_output_roots(root, roots, runs):
    """Say which folders below ``root`` the runs came from, and which jobs more than one holds."""
    from results.collect import repeated_runs

    print(f"Note: no runs directly in {root}; using the output roots found below it: "
          f"{', '.join(roots)}", file=sys.stderr)
    for group in repeated_runs(runs):
        run = group[0]
        print(f"Warning: {run.trainer}/{run.config} {run.kind} {run.dataset} ({run.shots} shots) seed "
              f"{run.seed} is in {len(group)} folders ({', '.join(r.path for r in group)}); the tables "
              "count one of them. Pass the output root you mean to --tables.", file=sys.stderr)


def run_tables(args):
    from results.collect import locate_runs, no_runs_message
    from results.render import to_csv, to_latex, to_markdown
    from results.tables import (BASE2NEW_TABLE, TABLE_KEYS, TITLES, build_tables,
                                resolve_table_name, select_seeds, table_shots)

    try:
        keys = [resolve_table_name(n) for n in args.table] if args.table else list(TABLE_KEYS)
        runs, roots = locate_runs(args.tables)
    except (ValueError, FileNotFoundError) as error:
        fail(str(error))
    if not roots:
        print(f"Error: {no_runs_message(args.tables)}", file=sys.stderr)
        return 1
    if roots != [args.tables]:
        report_output_roots(args.tables, roots, runs)
    if args.plot and BASE2NEW_TABLE not in keys:
        keys.append(BASE2NEW_TABLE)
    if args.outlier < 0:
        fail(f"--outlier {args.outlier}: give the margin in accuracy points, 0 or more.")
    absent = sorted(set(args.seeds or ()) - {run.seed for run in runs})
    if absent:
        print(f"Warning: no runs of seed {', '.join(map(str, absent))} under {args.tables}.", file=sys.stderr)
    tables = build_tables(runs, keys, shots=args.shots, paper=args.paper,
                          all_datasets=args.all_datasets, seeds=args.seeds, outlier=args.outlier)
    printed = []
    for key, table in tables.items():
        if table is None:
            title = TITLES[key].format(shots=table_shots(key, args.shots))
            print(f"{title}: no runs under {args.tables}, skipped.\n")
            continue
        if args.table and key not in [resolve_table_name(n) for n in args.table]:
            continue  # built only for the plot
        print(to_markdown(table))
        printed.append(table)
    if printed:
        from results.provenance import provenance_markdown
        from results.run_facts import RunFactsError
        try:
            print(provenance_markdown(select_seeds(runs, args.seeds)))
        except RunFactsError as error:
            fail(str(error))
    if args.csv and printed:
        atomic_write_text(args.csv, to_csv(printed))
    if args.latex and printed:
        atomic_write_text(args.latex, "\n".join(to_latex(t) for t in printed))
    if args.plot:
        if tables.get(BASE2NEW_TABLE) is None:
            fail(f"--plot needs base-to-new runs, and there are none under {args.tables}.")
        from results.plot import plot_base2new

        plot_base2new(tables[BASE2NEW_TABLE], args.plot)
        print(f"Plot saved to {args.plot}")
    return 0 if printed else 1


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.directory and args.directory_option and args.directory != args.directory_option:
        fail("give the directory once: either positional or --directory, not two different ones.")
    directory = args.directory or args.directory_option
    if args.tables:
        if directory:
            fail("--tables takes the output root itself; do not also pass a directory.")
        return run_tables(args)
    if not directory:
        fail("missing the directory to parse (or --tables OUTPUT_ROOT for the paper tables).")
    return run_seed_summary(args, directory)


if __name__ == "__main__":
    sys.exit(main())
