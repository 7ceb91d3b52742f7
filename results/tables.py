"""The paper's tables (few-shot, cross-dataset, base-to-new, domain generalisation) from runs.

Every project cell is the mean over the seeds found, or those selected; it shows how many
(n), and the CSV also has the std and the seeds. A base/new pair over different seed sets and a
seed far from the median of its cell are flagged in the notes, with the run folder.
Base-to-new HM follows the papers: per dataset HM(mean base, mean new); for the average,
HM of the averaged base and new accuracies, never the mean of per-dataset HMs.
"""
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

from results import paper_numbers
from results.benchmarks import (ALL_DATASETS, CROSS_DATASET_TARGETS, DG_TARGETS,
                                ELEVEN_DATASETS, SOURCE_DATASET, display_name)
from results.collect import EVALUATION, FEW_SHOT, TEST_NEW, TRAIN_BASE
from results.seeds import mean_and_std

FEW_SHOT_TABLE = "few_shot"
CROSS_DATASET_TABLE = "cross_dataset"
BASE2NEW_TABLE = "base2new"
DG_TABLE = "domain_generalization"
TABLE_KEYS = (FEW_SHOT_TABLE, CROSS_DATASET_TABLE, BASE2NEW_TABLE, DG_TABLE)
TABLE_ALIASES = {
    "few_shot": FEW_SHOT_TABLE, "fewshot": FEW_SHOT_TABLE, "few-shot": FEW_SHOT_TABLE,
    "1": FEW_SHOT_TABLE, "i": FEW_SHOT_TABLE,
    "cross_dataset": CROSS_DATASET_TABLE, "cross-dataset": CROSS_DATASET_TABLE,
    "xd": CROSS_DATASET_TABLE, "2": CROSS_DATASET_TABLE, "ii": CROSS_DATASET_TABLE,
    "base2new": BASE2NEW_TABLE, "base-to-new": BASE2NEW_TABLE, "b2n": BASE2NEW_TABLE,
    "3": BASE2NEW_TABLE, "iii": BASE2NEW_TABLE,
    "domain_generalization": DG_TABLE, "domain_generalisation": DG_TABLE, "dg": DG_TABLE,
    "4": DG_TABLE, "iv": DG_TABLE,
}
TITLES = {
    FEW_SHOT_TABLE: "Table I: few-shot recognition ({shots} shots)",
    CROSS_DATASET_TABLE: "Table II: cross-dataset evaluation (ImageNet source, {shots} shots)",
    BASE2NEW_TABLE: "Table III: base-to-new generalisation (Base / New / HM)",
    DG_TABLE: "Table IV: domain generalisation (ImageNet source, {shots} shots)",
}
# Rows "MuDPT vs X": the main method against each baseline that is present.
MAIN_METHOD = "MuDPT"
BASELINES = ("CoOp", "CoCoOp")
DEFAULT_OUTLIER = 10.0  # points from the median of a cell's seeds (USERS: DTD/EuroSAT blow-ups)
# The few-shot table takes --shots; base-to-new, cross-dataset and DG are 16-shot protocols.
PROTOCOL_SHOTS = 16


def resolve_table_name(name):
    key = TABLE_ALIASES.get(name.strip().lower())
    if key is None:
        raise ValueError(f"Unknown table '{name}'. Choose one of: {', '.join(TABLE_KEYS)} "
                         "(aliases: fewshot, xd, b2n, dg, or I-IV).")
    return key


@dataclass(frozen=True)
class Value:
    mean: float
    std: Optional[float] = None   # over seeds; None for derived values (averages, HM, differences)
    n: Optional[int] = None       # seeds behind a project cell; None for derived/paper values
    signed: bool = False          # a difference: printed with its sign
    partial: str = ""             # e.g. "3/11" when an average covers only some datasets
    covers: tuple = ()            # for averages: the datasets behind it
    seeds: tuple = ()             # for project cells: the seeds averaged, sorted

    def number(self):
        return f"{self.mean:+.2f}" if self.signed else f"{self.mean:.2f}"


@dataclass
class Table:
    key: str
    title: str
    header: list                      # first entry names the row labels
    rows: list                        # [(label, [cell, ...])], a cell: {metric: Value|None} or None
    metrics: tuple = ("accuracy",)
    notes: list = field(default_factory=list)


def _seed_value(by_seed):
    """The cell of one method and dataset: {seed: accuracy} -> mean, std and which seeds."""
    mean, std = mean_and_std([by_seed[s] for s in sorted(by_seed)])
    return Value(mean=mean, std=std, n=len(by_seed), seeds=tuple(sorted(by_seed)))


def select_seeds(runs, seeds=None):
    """The runs of the given seeds (all runs when ``seeds`` is None)."""
    return list(runs) if seeds is None else [r for r in runs if r.seed in set(seeds)]


def _average(values, datasets):
    """Mean of the dataset values present; marks how many of the datasets it covers."""
    present = [(d, v.mean) for d, v in zip(datasets, values) if v is not None]
    if not present:
        return None
    partial = "" if len(present) == len(datasets) else f"{len(present)}/{len(datasets)}"
    return Value(mean=sum(m for _, m in present) / len(present), partial=partial,
                 covers=tuple(d for d, _ in present))


def harmonic_mean(base, new):
    """HM = 2*B*N/(B+N); 0 when both are 0."""
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def _difference(a, b):
    # Averages over different sets of datasets are not comparable.
    if a is None or b is None or a.covers != b.covers:
        return None
    return Value(mean=a.mean - b.mean, signed=True)


def config_family(kind, config, dataset):
    """The row a config's runs belong to: in base-to-new, a per-dataset config ("<config>_<dataset>",
    and MMA's "_imnet" for ImageNet) joins its method's row instead of making a row of one dataset.
    (Elsewhere a config keeps its own row: the cross-dataset tables pair the ImageNet run by config.)"""
    if kind not in (TRAIN_BASE, TEST_NEW):
        return config
    for suffix in (f"_{dataset}", "_imnet" if dataset == "imagenet" else None):
        if suffix and config.endswith(suffix) and len(config) > len(suffix):
            return config[:-len(suffix)]
    return config


class _RunIndex:
    """Finished runs grouped as (kind, trainer, config family, shots) -> dataset -> {seed: run}."""

    def __init__(self, runs, seeds=None, outlier=DEFAULT_OUTLIER):
        self.groups = defaultdict(lambda: defaultdict(dict))
        self.unfinished = []
        self.seeds = None if seeds is None else sorted(set(seeds))
        self.outlier = outlier
        for run in select_seeds(runs, seeds):
            if run.accuracy is None:
                self.unfinished.append(run)
                continue
            family = config_family(run.kind, run.config, run.dataset)
            self.groups[(run.kind, run.trainer, family, run.shots)][run.dataset][run.seed] = run

    def methods(self, kind, shots=None):
        """(trainer, config, shots) of the groups of one kind, ordered for display."""
        keys = {(t, c, s) for (k, t, c, s) in self.groups if k == kind and (shots is None or s == shots)}
        return sorted(keys, key=_method_order)

    def value(self, kind, trainer, config, shots, dataset):
        seeds = self.groups.get((kind, trainer, config, shots), {}).get(dataset)
        return _seed_value({seed: run.accuracy for seed, run in seeds.items()}) if seeds else None

    def datasets(self, kind, trainer, config, shots):
        return set(self.groups.get((kind, trainer, config, shots), {}))

    def outliers(self, groups, datasets):
        """Seeds more than ``outlier`` points from the median of their cell (3 seeds or more:
        the median of all of them, which one bad seed cannot move)."""
        notes = []
        for (kind, trainer, config, shots), per_dataset in sorted(self.groups.items()):
            if (kind, trainer, config, shots) not in groups:
                continue
            for dataset, seeds in sorted(per_dataset.items()):
                if len(seeds) < 3 or dataset not in datasets:
                    continue
                median = statistics.median(run.accuracy for run in seeds.values())
                for seed, run in sorted(seeds.items()):
                    if abs(run.accuracy - median) > self.outlier:
                        notes.append(f"Outlier: {trainer}/{config} {kind} {dataset} seed {seed}: "
                                     f"{run.accuracy:.2f} vs median {median:.2f} of {len(seeds)} seeds, "
                                     f"in {run.path}; check it before averaging.")
        return notes


_KNOWN_ORDER = {"ZeroshotCLIP": 0, "CoOp": 1, "CoCoOp": 2, "MaPLe": 3, "IVLP": 4, "VPT": 5,
                "DPT": 6, "DCP": 7, MAIN_METHOD: 9}


def _method_order(key):
    trainer, config, shots = key
    return (_KNOWN_ORDER.get(trainer, 8), trainer, config, shots)


def _labels(methods):
    """Row label per method: the trainer name, plus the config when a trainer has several."""
    per_trainer = defaultdict(int)
    for trainer, _, _ in methods:
        per_trainer[trainer] += 1
    return {m: (m[0] if per_trainer[m[0]] == 1 else f"{m[0]} ({m[1]})") for m in methods}


def _single(value):
    return None if value is None else {"accuracy": value}


def _comparison_rows(method_rows, labels):
    """Rows "MuDPT vs CoOp" etc.: per column differences of the project rows."""
    rows = []
    mains = [m for m in method_rows if m[0] == MAIN_METHOD]
    for baseline in BASELINES:
        others = [m for m in method_rows if m[0] == baseline]
        for main in mains:
            for other in others:
                cells = []
                for a, b in zip(method_rows[main], method_rows[other]):
                    diff = _difference(a and a.get("accuracy"), b and b.get("accuracy"))
                    cells.append(_single(diff))
                rows.append((f"{labels[main]} vs {labels[other]}", cells))
    return rows


def _paper_label(row):
    return f"{row.method} [{row.source}]"


def _unfinished_note(index, groups, datasets):
    stale = [r for r in index.unfinished
             if (r.kind, r.trainer, config_family(r.kind, r.config, r.dataset), r.shots) in groups
             and r.dataset in datasets]
    if not stale:
        return []
    shown = ", ".join(r.path for r in stale[:5])
    more = f" and {len(stale) - 5} more" if len(stale) > 5 else ""
    return [f"{len(stale)} run(s) without a final result were left out "
            f"(crashed, killed or still running): {shown}{more}."]


def _common_notes(index, kinds, methods, datasets):
    """Legend, runs left out, and seeds far from their cell's median, for this table only."""
    groups = {(kind,) + m for kind in kinds for m in methods}
    selected = f" (seeds {', '.join(map(str, index.seeds))} selected)" if index.seeds else ""
    notes = [f"- `(n=K)`: the mean of K seeds{selected}; `(k/N)`: an average over k of N datasets; "
             "`-`: no run."]
    notes += ["- " + n for n in _unfinished_note(index, groups, set(datasets))]
    notes += ["- " + n for n in index.outliers(groups, set(datasets))]
    return notes


def _shown(columns, used, all_datasets):
    return list(columns) if all_datasets else [d for d in columns if d in used]


def _own_datasets(used):
    """Datasets outside the paper's (own data named by DATASET.TAG, the synthetic benchmark):
    shown after the benchmarks, never part of their averages."""
    return sorted(d for d in used if d not in ALL_DATASETS)


def _own_note(own):
    return [f"- Not benchmarks of the paper ({', '.join(own)}): shown, but not in the averages."] if own else []


def few_shot_table(index, shots=16, paper=False, all_datasets=False):
    methods = index.methods(FEW_SHOT, shots)
    # The ImageNet run of the cross-dataset protocol has the few-shot layout; it belongs
    # to Table II/IV, unless its config was also run on other datasets.
    sources = {(t, c, s) for (t, c, s) in index.methods(EVALUATION, shots)}
    methods = [m for m in methods
               if not (m in sources and index.datasets(FEW_SHOT, *m) <= {SOURCE_DATASET})]
    methods = [m for m in methods if index.datasets(FEW_SHOT, *m) & set(ELEVEN_DATASETS)
               or _own_datasets(index.datasets(FEW_SHOT, *m))]
    if not methods:
        return None
    used = set().union(*(index.datasets(FEW_SHOT, *m) for m in methods))
    own = _own_datasets(used)
    columns = _shown(ELEVEN_DATASETS, used, all_datasets) + own
    labels = _labels(methods)
    method_rows = {}
    for m in methods:
        values = [index.value(FEW_SHOT, *m, d) for d in columns]
        all_values = [index.value(FEW_SHOT, *m, d) for d in ELEVEN_DATASETS]
        method_rows[m] = ([_single(v) for v in values]
                          + [_single(_average(all_values, ELEVEN_DATASETS))])
    rows = [(labels[m], cells) for m, cells in method_rows.items()]
    rows += _comparison_rows(method_rows, labels)
    if paper and shots == 16:
        for prow in paper_numbers.FEW_SHOT_16:
            cells = [_single(_paper_value(prow.values.get(d))) for d in columns]
            rows.append((_paper_label(prow), cells + [_single(_paper_value(prow.average))]))
    header = ["Method"] + [display_name(d) for d in columns] + ["Average"]
    notes = _common_notes(index, {FEW_SHOT}, methods, ELEVEN_DATASETS + tuple(own)) + _own_note(own)
    return Table(FEW_SHOT_TABLE, TITLES[FEW_SHOT_TABLE].format(shots=shots), header, rows,
                 notes=notes)


def _paper_value(number):
    return None if number is None else Value(mean=number)


def _transfer_table(index, key, targets, shots, paper_rows, paper, all_datasets, average_label,
                    with_own=False):
    """Tables II and IV: the ImageNet source accuracy, then eval-only targets, then their mean.
    ``with_own``: own datasets evaluated as targets get columns too (not in the mean)."""
    def own_of(m):
        return _own_datasets(index.datasets(EVALUATION, *m)) if with_own else []

    methods = [m for m in index.methods(EVALUATION, shots)
               if index.datasets(EVALUATION, *m) & set(targets) or own_of(m)]
    if not methods:
        return None
    used = set().union(*(index.datasets(EVALUATION, *m) for m in methods))
    own = _own_datasets(used) if with_own else []
    columns = _shown(targets, used, all_datasets) + own
    labels = _labels(methods)
    method_rows = {}
    for m in methods:
        source = index.value(FEW_SHOT, *m, SOURCE_DATASET)
        values = [index.value(EVALUATION, *m, d) for d in columns]
        all_targets = [index.value(EVALUATION, *m, d) for d in targets]
        method_rows[m] = ([_single(source)] + [_single(v) for v in values]
                          + [_single(_average(all_targets, targets))])
    rows = [(labels[m], cells) for m, cells in method_rows.items()]
    rows += _comparison_rows(method_rows, labels)
    if paper:
        for prow in paper_rows:
            average = prow.average
            if average is None:
                present = [prow.values[d] for d in targets if d in prow.values]
                average = sum(present) / len(present) if len(present) == len(targets) else None
            cells = ([_single(_paper_value(prow.values.get(SOURCE_DATASET)))]
                     + [_single(_paper_value(prow.values.get(d))) for d in columns]
                     + [_single(_paper_value(average))])
            rows.append((_paper_label(prow), cells))
    header = (["Method", f"{display_name(SOURCE_DATASET)} (source)"]
              + [display_name(d) for d in columns] + [average_label])
    notes = (_common_notes(index, {EVALUATION}, methods, tuple(targets) + tuple(own))
             + _common_notes(index, {FEW_SHOT}, methods, [SOURCE_DATASET])[1:] + _own_note(own))
    return Table(key, TITLES[key].format(shots=shots), header, rows, notes=notes)


def cross_dataset_table(index, shots=16, paper=False, all_datasets=False):
    return _transfer_table(index, CROSS_DATASET_TABLE, CROSS_DATASET_TARGETS, shots,
                           paper_numbers.CROSS_DATASET, paper, all_datasets,
                           f"Average ({len(CROSS_DATASET_TARGETS)} targets)", with_own=True)


def domain_generalization_table(index, shots=16, paper=False, all_datasets=False):
    return _transfer_table(index, DG_TABLE, DG_TARGETS, shots,
                           paper_numbers.DOMAIN_GENERALISATION, paper, all_datasets,
                           f"Average ({len(DG_TARGETS)} targets)")


def _b2n_cell(base, new):
    if base is None and new is None:
        return None
    hm = None
    if base is not None and new is not None:
        hm = Value(mean=harmonic_mean(base.mean, new.mean))
    return {"base": base, "new": new, "hm": hm}


def base2new_average(base_values, new_values, total=len(ELEVEN_DATASETS)):
    """Average base and new over datasets, and HM of those averages (not a mean of HMs).

    Only datasets that have both base and new enter, so that B, N and HM describe the same set.
    """
    pairs = [(i, b, n) for i, (b, n) in enumerate(zip(base_values, new_values))
             if b is not None and n is not None]
    if not pairs:
        return None
    partial = "" if len(pairs) == total else f"{len(pairs)}/{total}"
    covers = tuple(i for i, _, _ in pairs)
    base = sum(b.mean for _, b, _ in pairs) / len(pairs)
    new = sum(n.mean for _, _, n in pairs) / len(pairs)
    return {metric: Value(value, partial=partial, covers=covers)
            for metric, value in (("base", base), ("new", new),
                                  ("hm", harmonic_mean(base, new)))}


def base2new_table(index, shots=16, paper=False, all_datasets=False):
    methods = sorted(set(index.methods(TRAIN_BASE, shots)) | set(index.methods(TEST_NEW, shots)),
                     key=_method_order)
    if not methods:
        return None
    used = set()
    for m in methods:
        used |= index.datasets(TRAIN_BASE, *m) | index.datasets(TEST_NEW, *m)
    own = _own_datasets(used)
    datasets = _shown(ELEVEN_DATASETS, used, all_datasets) + own
    labels = _labels(methods)

    columns = {}   # column label -> per-row cells (datasets..., average)
    project = {}
    for m in methods:
        base = [index.value(TRAIN_BASE, *m, d) for d in ELEVEN_DATASETS]
        new = [index.value(TEST_NEW, *m, d) for d in ELEVEN_DATASETS]
        cells = ([_b2n_cell(index.value(TRAIN_BASE, *m, d), index.value(TEST_NEW, *m, d))
                  for d in datasets] + [base2new_average(base, new)])
        project[m] = cells
        columns[labels[m]] = cells
    for main in [m for m in methods if m[0] == MAIN_METHOD]:
        for baseline in BASELINES:
            for other in [m for m in methods if m[0] == baseline]:
                diffs = []
                for a, b in zip(project[main], project[other]):
                    if a is None or b is None:
                        diffs.append(None)
                        continue
                    diff = {k: _difference(a[k], b[k]) for k in ("base", "new", "hm")}
                    diffs.append(diff if any(v is not None for v in diff.values()) else None)
                columns[f"{labels[main]} vs {labels[other]}"] = diffs
    if paper:
        for prow in paper_numbers.BASE2NEW:
            cells = [_b2n_cell(_paper_value(prow.base.get(d)), _paper_value(prow.new.get(d)))
                     for d in datasets]
            average = None
            if prow.average_base is not None:
                average = _b2n_cell(Value(prow.average_base), Value(prow.average_new))
            elif prow.average_hm is not None:  # a source that prints the HM alone
                average = {"base": None, "new": None, "hm": Value(mean=prow.average_hm)}
            cells.append(average)
            columns[_paper_label(prow)] = cells

    row_labels = [display_name(d) for d in datasets] + ["Average"]
    rows = [(label, [columns[c][i] for c in columns]) for i, label in enumerate(row_labels)]
    header = ["Dataset"] + list(columns)
    notes = _common_notes(index, {TRAIN_BASE, TEST_NEW}, methods, ELEVEN_DATASETS + tuple(own))
    notes.insert(1, "- Average: mean base and mean new over the datasets that have both; "
                    "HM of those two means (not the mean of per-dataset HMs).")
    notes += _mixed_seed_notes(index, methods, datasets, labels)
    notes += _own_note(own)
    return Table(BASE2NEW_TABLE, TITLES[BASE2NEW_TABLE], header, rows,
                 metrics=("base", "new", "hm"), notes=notes)


def _mixed_seed_notes(index, methods, datasets, labels):
    """A base/new pair averaged over different seeds: its HM mixes runs that do not belong together."""
    notes = []
    for m in methods:
        for d in datasets:
            base, new = index.value(TRAIN_BASE, *m, d), index.value(TEST_NEW, *m, d)
            if base is not None and new is not None and base.seeds != new.seeds:
                notes.append(f"- Mixed seeds: {labels[m]} on {display_name(d)} averages base over seeds "
                             f"{', '.join(map(str, base.seeds))} but new over seeds "
                             f"{', '.join(map(str, new.seeds))}; run the missing ones or pass --seeds.")
    return notes


BUILDERS = {
    FEW_SHOT_TABLE: few_shot_table,
    CROSS_DATASET_TABLE: cross_dataset_table,
    BASE2NEW_TABLE: base2new_table,
    DG_TABLE: domain_generalization_table,
}


def table_shots(key, shots):
    """``shots`` selects the few-shot table's runs; the other protocols keep theirs."""
    return shots if key == FEW_SHOT_TABLE else PROTOCOL_SHOTS


def build_tables(runs, keys=TABLE_KEYS, shots=16, paper=False, all_datasets=False, seeds=None,
                 outlier=DEFAULT_OUTLIER):
    """{table key: Table or None (no runs)} in the order of ``keys``; ``seeds``: only these
    (default: every seed found); ``outlier``: points from a cell's median that flag a seed."""
    index = _RunIndex(runs, seeds, outlier)
    return {key: BUILDERS[key](index, shots=table_shots(key, shots), paper=paper,
                               all_datasets=all_datasets)
            for key in keys}
