"""Check dataset folders under a data root: layout, split files, image counts, sources.

    python tools/check_datasets.py --root DATA [--dataset NAME ...]

NAME is a configs/datasets file stem (oxford_pets, imagenet, ...) or a registry
name (OxfordPets). Without --dataset every known dataset is checked. Own data
(--dataset image_folder, --root its folder) has every image opened as training opens
it, so a broken image makes it unusable. Nothing is written or downloaded. The exit
status is 1 when a dataset named with --dataset cannot be used, else 0.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="the data root (DATASET.ROOT)")
    parser.add_argument("--dataset", nargs="+", default=None,
                        help="datasets to check (default: all); e.g. oxford_pets imagenet")
    args = parser.parse_args(argv)

    # Imported once the arguments are parsed: --help and a wrong flag answer before torch loads.
    import dassl  # noqa: F401  (sets up torchvision before anything else)
    import datasets  # noqa: F401  (registers the dataset classes)
    from datasets.verify import check_dataset, known_datasets, resolve_name
    from tabulate import tabulate

    try:
        requested = [resolve_name(name) for name in args.dataset] if args.dataset else None
    except ValueError as exc:
        parser.error(str(exc))
    names = requested or [name for name in known_datasets() if name != "image_folder"]

    summary, unusable = [], []
    for name in names:
        report = check_dataset(name, args.root)
        verdict = "usable" if report.usable else "NOT USABLE"
        print(f"\n== {name} ({report.registry_name}): {verdict}")
        print(tabulate(report.rows, headers=["check", "status", "detail"]))
        if report.downloads:
            print("Where to get what is missing:")
            print("\n".join(report.downloads))
        summary.append((name, verdict))
        if not report.usable:
            unusable.append(name)

    print()
    print(tabulate(summary, headers=["dataset", "verdict"]))
    if requested and unusable:
        print(f"\nNot usable: {', '.join(unusable)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
