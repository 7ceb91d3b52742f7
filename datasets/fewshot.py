"""The few-shot sample ``split_fewshot/shot_{K}-seed_{S}``: cached and valid, or drawn and saved."""
import os

from .cache import ImageListCache, check_sampled_from, list_fingerprint

_NAMES_SHOWN = 5  # short classes named in the note


def fewshot_cache(split_fewshot_dir, dataset_dir, header, split_names):
    stem = os.path.join(split_fewshot_dir, f"shot_{header['num_shots']}-seed_{header['seed']}")
    return ImageListCache(stem, dataset_dir, header, split_names, what="few-shot cache")


def load_or_sample_fewshot(dataset, num_shots, seed, sources):
    """Return ``{split: few-shot list}`` for ``sources = {split: (full list, shots)}``.

    Sampling goes through ``dataset.generate_fewshot_dataset`` split by split, in
    the order of ``sources`` (train first), exactly as the original does.
    """
    full_lists = {name: items for name, (items, _) in sources.items()}
    header = {
        "dataset": type(dataset).__name__,
        "split_hash": list_fingerprint(full_lists, dataset.dataset_dir),
        "num_shots": num_shots,
        "seed": seed,
    }
    cache = fewshot_cache(dataset.split_fewshot_dir, dataset.dataset_dir, header, list(sources))

    def drawn_from_current_split(lists):
        for name, (items, shots) in sources.items():
            check_sampled_from(lists[name], items, name, shots)

    note_short_classes(sources, num_shots)
    lists = cache.load(validate=drawn_from_current_split,
                       announce="Loading preprocessed few-shot data from {}")
    if lists is None:
        lists = {name: dataset.generate_fewshot_dataset(items, num_shots=shots)
                 for name, (items, shots) in sources.items()}
        print(f"Saving preprocessed few-shot data to {cache.path}")
        cache.save(lists)
    # Part of the run's identity (results.json): the seed selects the images.
    dataset.fewshot_hash = report_sample(lists, num_shots, seed, dataset.dataset_dir)
    return lists


def note_short_classes(sources, num_shots):
    """One note when some classes have fewer images than the shots asked for (they keep all)."""
    parts = []
    for name, (items, shots) in sources.items():
        counts = {}
        for item in items:
            counts[item.classname] = counts.get(item.classname, 0) + 1
        short = sorted((count, classname) for classname, count in counts.items() if count < shots)
        if short:
            names = ", ".join(classname for _, classname in short[:_NAMES_SHOWN])
            more = ", ..." if len(short) > _NAMES_SHOWN else ""
            parts.append(f"{name}: {len(short)} of {len(counts)} classes have fewer than {shots} "
                         f"images (min {short[0][0]}: {names}{more})")
    if parts:
        print(f"Note: NUM_SHOTS={num_shots}, but " + "; ".join(parts)
              + ". These classes keep all their images.")


def report_sample(lists, num_shots, seed, dataset_dir):
    """One log line identifying the sample, so runs can be compared; returns its hash."""
    fingerprint = list_fingerprint(lists, dataset_dir)
    print(f"Few-shot sample: {num_shots} shots, SEED={seed}, image-list hash {fingerprint}")
    return fingerprint
