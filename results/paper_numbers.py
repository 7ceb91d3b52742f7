"""Published numbers to print under the project's own rows (``--paper``).

Top-1 accuracy (%), ViT-B/16, as printed in the sources named in each row. The MuDPT
rows are the MuDPT paper's Tables I-IV (arXiv 2306.11400); its CLIP/CoOp/CoCoOp rows are
quoted by it. Per-dataset base-to-new values of CLIP/CoOp/CoCoOp/MaPLe are the MaPLe
paper's Table 1 (CVPR 2023), which reproduces the CoCoOp paper's numbers for the baselines.
The KgCoOp, PromptSRC and MMA base-to-new averages are those of the READMEs of
htyao89/KgCoOp, muzairkhattak/PromptSRC and ZjjConan/Multi-Modal-Adapter.
"""
from dataclasses import dataclass, field
from typing import Optional

from results.benchmarks import DG_TARGETS, ELEVEN_DATASETS

MUDPT_PAPER = "MuDPT paper"
MAPLE_PAPER = "MaPLe paper"


@dataclass(frozen=True)
class PaperRow:
    method: str
    source: str
    values: dict                     # dataset name -> accuracy
    average: Optional[float] = None  # the printed average; None: not printed in the source


@dataclass(frozen=True)
class PaperBase2NewRow:
    method: str
    source: str
    base: dict = field(default_factory=dict)   # dataset name -> base accuracy
    new: dict = field(default_factory=dict)    # dataset name -> new accuracy
    average_base: Optional[float] = None
    average_new: Optional[float] = None
    average_hm: Optional[float] = None  # the printed HM, for a source that prints no base and new averages


def _row(method, source, numbers, average=None, datasets=ELEVEN_DATASETS):
    if len(numbers) != len(datasets):
        raise ValueError(f"{method}: {len(numbers)} numbers for {len(datasets)} datasets")
    return PaperRow(method, source, dict(zip(datasets, numbers)), average)


# Table I: few-shot, 16 shots (MuDPT paper). The MuDPT average is printed as 81.38
# although its arithmetic mean is 81.388; the printed value is kept.
FEW_SHOT_16 = (
    _row("CLIP", MUDPT_PAPER,
         [66.7, 92.7, 89.1, 65.3, 70.8, 86.3, 24.8, 62.6, 44.3, 41.8, 66.7], 64.65),
    _row("CoOp", MUDPT_PAPER,
         [63.57, 92.43, 89.47, 71.2, 93.1, 77.17, 29.07, 69.77, 64.2, 80.1, 74.9], 73.18),
    _row("CoCoOp", MUDPT_PAPER,
         [72.4, 95.4, 95.8, 71.6, 79.4, 89.2, 33.0, 76.8, 63.0, 73.8, 75.4], 75.07),
    _row("MuDPT", MUDPT_PAPER,
         [72.7, 96.72, 94.19, 80.43, 96.47, 87.38, 43.13, 76.18, 72.37, 92.17, 83.53], 81.38),
)

# Table II: cross-dataset, ImageNet source then the 10 targets; average over the targets.
CROSS_DATASET = (
    _row("CoOp", MUDPT_PAPER,
         [71.51, 93.7, 89.14, 64.51, 68.71, 85.3, 18.47, 64.15, 41.92, 46.39, 66.55], 63.88),
    _row("CoCoOp", MUDPT_PAPER,
         [71.02, 94.43, 90.14, 65.32, 71.88, 86.06, 22.94, 67.36, 45.73, 45.37, 68.21], 65.74),
    _row("MuDPT", MUDPT_PAPER,
         [72.13, 94.07, 90.74, 65.58, 71.8, 86.13, 24.12, 67.38, 45.3, 47.14, 69.0], 66.13),
    _row("MaPLe", MAPLE_PAPER,
         [70.72, 93.53, 90.49, 65.57, 72.23, 86.20, 24.74, 67.01, 46.49, 48.06, 68.69], 66.30),
)

# Table IV: domain generalisation, ImageNet source then V2, Sketch, A, R. The papers print
# no average; the table computes the mean of the 4 targets itself.
_DG_COLUMNS = ("imagenet",) + DG_TARGETS
DOMAIN_GENERALISATION = (
    _row("CLIP", MUDPT_PAPER, [66.7, 60.83, 46.15, 47.77, 73.96], datasets=_DG_COLUMNS),
    _row("CoOp", MUDPT_PAPER, [71.51, 64.20, 47.99, 49.71, 75.21], datasets=_DG_COLUMNS),
    _row("CoCoOp", MUDPT_PAPER, [71.02, 64.07, 48.75, 50.63, 76.18], datasets=_DG_COLUMNS),
    _row("MuDPT", MUDPT_PAPER, [72.13, 64.92, 49.31, 49.61, 77.02], datasets=_DG_COLUMNS),
)
# MaPLe's DG row has no source accuracy in the table it comes from.
DOMAIN_GENERALISATION += (
    _row("MaPLe", MAPLE_PAPER, [64.07, 49.15, 50.90, 76.98], datasets=DG_TARGETS),
)

# Table III: base-to-new, per dataset (base, new) in ELEVEN_DATASETS order.
_B2N_PER_DATASET = {
    "CLIP": [(72.43, 68.14), (96.84, 94.00), (91.17, 97.26), (63.37, 74.89), (72.08, 77.80),
             (90.10, 91.22), (27.19, 36.29), (69.36, 75.35), (53.24, 59.90), (56.48, 64.05),
             (70.53, 77.50)],
    "CoOp": [(76.47, 67.88), (98.00, 89.81), (93.67, 95.29), (78.12, 60.40), (97.60, 59.67),
             (88.33, 82.26), (40.44, 22.30), (80.60, 65.89), (79.44, 41.18), (92.19, 54.74),
             (84.69, 56.05)],
    "CoCoOp": [(75.98, 70.43), (97.96, 93.81), (95.20, 97.69), (70.49, 73.59), (94.87, 71.75),
               (90.70, 91.29), (33.41, 23.71), (79.74, 76.86), (77.01, 56.00), (87.49, 60.04),
               (82.33, 73.45)],
    "MaPLe": [(76.66, 70.54), (97.74, 94.36), (95.43, 97.76), (72.94, 74.00), (95.92, 72.46),
              (90.71, 92.05), (37.44, 35.61), (80.82, 78.70), (80.36, 59.18), (94.07, 73.23),
              (83.00, 78.66)],
}
_B2N_AVERAGES = {"CLIP": (69.34, 74.22), "CoOp": (82.69, 63.22), "CoCoOp": (80.47, 71.69),
                 "MaPLe": (82.28, 75.14)}


def _b2n_row(method):
    pairs = _B2N_PER_DATASET[method]
    return PaperBase2NewRow(
        method, MAPLE_PAPER,
        base={d: b for d, (b, _) in zip(ELEVEN_DATASETS, pairs)},
        new={d: n for d, (_, n) in zip(ELEVEN_DATASETS, pairs)},
        average_base=_B2N_AVERAGES[method][0], average_new=_B2N_AVERAGES[method][1])


BASE2NEW = tuple(_b2n_row(m) for m in ("CLIP", "CoOp", "CoCoOp", "MaPLe")) + (
    # The MuDPT paper gives per-dataset values only as a bar chart (Fig. 5): averages only.
    PaperBase2NewRow("MuDPT", MUDPT_PAPER, average_base=82.71, average_new=74.5),
    # The later methods' 11-dataset averages (3 seeds) as their released READMEs print them; their
    # per-dataset values are in the papers only. CLIP-LoRA's README publishes no base-to-new numbers.
    PaperBase2NewRow("KgCoOp", "KgCoOp README", average_base=80.73, average_new=73.60),
    PaperBase2NewRow("PromptSRC", "PromptSRC README", average_base=84.26, average_new=76.10),
    PaperBase2NewRow("MMA", "MMA README", average_base=83.20, average_new=76.80),
    # TCP's README prints no results: the paper's averages (CVPR 2024, arXiv 2311.18231; HM 79.51), as
    # listed in zhengli97/Awesome-Prompt-Adapter-Learning-for-VLMs.
    PaperBase2NewRow("TCP", "TCP paper", average_base=84.13, average_new=75.36),
    # HiCroPL (ICCV 2025): the zzeoZheng/HiCroPL README's "Results on B2N" table (HM 81.75);
    # its per-dataset values are in the paper (arXiv 2507.14976) only.
    PaperBase2NewRow("HiCroPL", "HiCroPL README", average_base=85.89, average_new=77.99),
    # CoPrompt (ICLR 2024): the ShuvenduRoy/CoPrompt README's table (3 seeds), which prints HM 80.48 (the HM of
    # its averages is 80.47); per-dataset values are in the paper (arXiv 2306.01195) only.
    PaperBase2NewRow("CoPrompt", "CoPrompt README", average_base=84.00, average_new=77.23),
    # MMRL (CVPR 2025): the paper's Table 1 averages (arXiv 2503.08497; HM 81.20), as also listed in
    # zhengli97/Awesome-Prompt-Adapter-Learning-for-VLMs; the yunncheng/MMRL README prints no results.
    PaperBase2NewRow("MMRL", "MMRL paper", average_base=85.68, average_new=77.16),
    # LwEIB (IJCV 2025): the ZjjConan/VLM-LwEIB README prints the paper's base-to-new HM only (81.21; 81.18 with
    # its released configs); base, new and per-dataset values are in the paper (doi 10.1007/s11263-025-02354-1).
    PaperBase2NewRow("LwEIB", "LwEIB README", average_hm=81.21),
)


# DePT (CVPR 2024) on five base methods: the base-to-new table of the Koorye/DePT README
# (examples/base_to_new_performance.png, the paper's Table 1), per dataset in ELEVEN_DATASETS order
# and the printed 11-dataset averages. The README prints UCF101 of PromptSRC+DePT as 87.73 / 77.70
# with HM 82.46, which those two numbers do not give (82.41); the printed base and new are kept.
DEPT_README = "DePT README"
_DEPT_PER_DATASET = {
    "CoOp+DePT": [(77.13, 70.10), (98.33, 94.33), (94.70, 97.63), (79.67, 72.40), (98.20, 72.00), (90.43, 91.33),
                  (42.53, 22.53), (82.37, 75.07), (83.20, 56.13), (88.27, 66.27), (85.43, 72.17)],
    "CoCoOp+DePT": [(76.87, 70.47), (98.37, 93.87), (94.03, 97.20), (79.87, 73.33), (98.33, 72.57), (90.30, 91.30),
                    (43.07, 31.30), (82.20, 76.73), (82.77, 55.40), (90.27, 66.87), (85.70, 72.80)],
    "KgCoOp+DePT": [(77.03, 70.13), (98.30, 94.60), (94.33, 97.23), (79.13, 75.47), (98.00, 76.37), (90.50, 91.60),
                    (43.20, 34.83), (82.33, 77.80), (82.20, 59.13), (89.03, 71.07), (85.80, 77.23)],
    "MaPLe+DePT": [(77.87, 70.23), (98.53, 95.03), (95.03, 97.83), (80.93, 71.73), (98.03, 73.17), (90.33, 91.53),
                   (44.53, 32.80), (82.90, 76.40), (83.87, 59.93), (94.43, 76.23), (86.87, 78.10)],
    "PromptSRC+DePT": [(78.20, 70.27), (98.57, 94.10), (95.43, 97.33), (80.80, 75.00), (98.40, 77.10),
                       (90.87, 91.57), (45.70, 36.73), (83.27, 78.97), (84.80, 61.20), (93.23, 77.90),
                       (87.73, 77.70)],
}
_DEPT_AVERAGES = {"CoOp+DePT": (83.66, 71.82), "CoCoOp+DePT": (83.80, 72.89), "KgCoOp+DePT": (83.62, 75.04),
                  "MaPLe+DePT": (84.85, 74.82), "PromptSRC+DePT": (85.19, 76.17)}
BASE2NEW += tuple(
    PaperBase2NewRow(method, DEPT_README,
                     base={d: b for d, (b, _) in zip(ELEVEN_DATASETS, pairs)},
                     new={d: n for d, (_, n) in zip(ELEVEN_DATASETS, pairs)},
                     average_base=_DEPT_AVERAGES[method][0], average_new=_DEPT_AVERAGES[method][1])
    for method, pairs in _DEPT_PER_DATASET.items())
