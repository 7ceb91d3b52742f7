"""Which settings produced each row: the effective settings of its runs, read from their folders.

Per run: the config file and the overrides given on the command line (the ``opts`` of the
arguments block), the method's own config keys (CoOp's context length as it ran when CTX_INIT
sets it), the class descriptions file it read (name and hash), the precision that ran, the
architecture of the loaded CLIP weights and the number of trainable parameters (these from the
run's run_facts.json; for an older run without one, from the lines its log printed). So a MuDPT
row shows at a glance whether it is the paper's design or a released variant, and a run trained
with other settings (``OPTIM.MAX_EPOCH 1``) shows as such.

One row per trainer, config folder and distinct settings, with its number of runs. The
training runs describe a row; eval-only runs (new classes, cross-dataset targets) only load
those weights, and count only for a row without training runs (zero-shot CLIP).
"""
import os
from collections import Counter

from results.logparse import LOG_NAME, read_run_log

# Overrides the scripts set per protocol, and the weights path (the architecture tells what it held).
NOT_SETTINGS = ("DATASET.NUM_SHOTS", "DATASET.SUBSAMPLE_CLASSES", "MODEL.BACKBONE.PATH")
UNKNOWN = "unknown"
MISSING = "-"


def method_settings(log, trainer):
    """{key: value} of TRAINER.<TRAINER> in the config dump (nested keys dotted)."""
    prefix = f"TRAINER.{trainer.upper()}."
    return {key[len(prefix):]: value for key, value in log.config.items() if key.startswith(prefix)}


def read_method_settings(log_path, trainer):
    """(method settings, trainable-parameter count as the table shows it, or None) of one log.txt."""
    log = read_run_log(log_path)
    params = log.facts.get("trainable_params")
    return method_settings(log, trainer), None if params is None else params_text(params)


def params_text(count):
    return f"{count:,}"  # as the log prints it: 1,202,176


def settings_text(settings, n_ctx=None, descriptions=None):
    parts = []
    for key, value in settings.items():
        if key == "N_CTX" and n_ctx is not None and str(n_ctx) != value:
            value = f"{n_ctx} (set by CTX_INIT; N_CTX {value})"  # CoOp's rule: the phrase's length
        parts.append(f"{key} {value}")
    if descriptions:  # which class descriptions the run read: its file and the file's hash
        parts.append(f"descriptions {os.path.basename(descriptions['source'])} "
                     f"(sha256 {descriptions['sha256'][:12]})")
    return ", ".join(parts) or MISSING


def precision_text(log, settings):
    if "precision" in log.facts:
        return log.facts["precision"]
    return f"{settings['PREC']} (configured)" if "PREC" in settings else UNKNOWN


def run_provenance(log, trainer, config):
    """The row cells of one run, in PROVENANCE_HEADER order from "Config file" on."""
    settings = method_settings(log, trainer)
    overrides = [f"{k} {v}" for k, v in log.opts if k not in NOT_SETTINGS]
    params = log.facts.get("trainable_params")
    return (log.arguments.get("config_file") or config,
            " ".join(overrides) or MISSING,
            precision_text(log, settings),
            log.facts.get("architecture", UNKNOWN),
            MISSING if params is None else params_text(params),
            settings_text(settings, log.facts.get("n_ctx"), log.facts.get("descriptions")))


PROVENANCE_HEADER = ("Method", "Config file", "Overrides", "Precision", "CLIP", "Trainable params",
                     "Settings", "Runs")


def provenance_rows(runs):
    """[(trainer, cells..., number of runs)], one per trainer, config folder and distinct settings."""
    logs = {}
    for run in runs:
        path = os.path.join(run.path, LOG_NAME)
        if os.path.isfile(path):
            logs.setdefault((run.trainer, run.config), []).append(read_run_log(path))
    rows = []
    for (trainer, config), group in sorted(logs.items()):
        trained = [log for log in group if log.arguments.get("eval_only") != "True"]
        counts = Counter(run_provenance(log, trainer, config) for log in trained or group)
        rows += [(trainer,) + cells + (str(n),) for cells, n in sorted(counts.items())]
    return rows


def provenance_markdown(runs):
    rows = provenance_rows(runs)
    if not rows:
        return ""
    lines = ["### Provenance", "", "| " + " | ".join(PROVENANCE_HEADER) + " |",
             "|" + "|".join("---" for _ in PROVENANCE_HEADER) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
