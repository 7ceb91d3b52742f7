"""Write a tiny fake dataset in the exact layout its dataset class reads.

    python tools/make_fake_dataset.py --dataset NAME --root DATA [--classes C] [--images-per-class K]

NAME is a configs/datasets file stem (caltech101, oxford_pets, ..., imagenet_r,
image_folder). The data goes to DATA/<dataset folder> (for image_folder: DATA itself).
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def dataset_config_names():
    """The file stems of configs/datasets/*.yaml, read from the folder (no torch needed)."""
    folder = os.path.join(REPO, "configs", "datasets")
    return sorted(name[:-len(".yaml")] for name in os.listdir(folder) if name.endswith(".yaml"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, nargs="+", metavar="NAME",
                        help=f"one or more of: {', '.join(dataset_config_names())}, or 'all'")
    parser.add_argument("--root", required=True, help="the data root (DATASET.ROOT)")
    parser.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    parser.add_argument("--images-per-class", type=int, default=8,
                        help="images per class, split about 50/20/30 (default 8, at least 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random image colours")
    parser.add_argument("--no-split", action="store_true",
                        help="leave out the split JSON, so the dataset class must create it")
    args = parser.parse_args(argv)

    # Imported once the arguments are parsed: --help and a wrong flag answer before torch loads.
    import dassl  # noqa: F401  (sets up torchvision before anything else)
    from datasets.fake import FAKE_DATASET_NAMES, make_fake_dataset

    names = FAKE_DATASET_NAMES if args.dataset == ["all"] else args.dataset
    for name in names:
        root = os.path.join(args.root, "image_folder") if name == "image_folder" and args.dataset == ["all"] else args.root
        try:
            fake = make_fake_dataset(name, root, num_classes=args.classes,
                                     images_per_class=args.images_per_class, seed=args.seed,
                                     with_split=not args.no_split)
        except ValueError as exc:
            parser.error(str(exc))
        sizes = ", ".join(f"{split} {count}" for split, count in fake.counts.items())
        print(f"{name}: {len(fake.classnames)} classes ({sizes}) in {fake.dataset_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
