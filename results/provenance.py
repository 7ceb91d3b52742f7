"""Which setting produced each row: a method's own config keys and its trainable-parameter count.

Read from a run's log.txt (the sorted config dump and the "# trainable params: N" line that the
trainers print), so a MuDPT row shows at a glance whether it is the paper's design
(INJECTION transformer, post-LN, no shallow fusion) or a released variant.
"""
import os
import re

from results.logparse import LOG_NAME

_PARAMS_RE = re.compile(r"^# trainable params: ([\d,]+)")


def read_method_settings(log_path, trainer):
    """({key: value} of TRAINER.<TRAINER> in the config dump, trainable-parameter count or None)."""
    node = f"  {trainer.upper()}:"
    settings, params, inside = {}, None, False
    with open(log_path, "r", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if inside:
                if line.startswith("    ") and ":" in line:
                    key, _, value = line.strip().partition(":")
                    settings[key] = value.strip()
                    continue
                inside = False
            if line == node and not settings:
                inside = True
            match = _PARAMS_RE.match(line)
            if match:
                params = match.group(1)
    return settings, params


def provenance_markdown(runs):
    """One row per (trainer, config) among ``runs``, from the first of its runs that has a log."""
    seen = {}
    for run in sorted(runs, key=lambda r: (r.trainer, r.config, r.path)):
        log_path = os.path.join(run.path, LOG_NAME)
        if (run.trainer, run.config) not in seen and os.path.isfile(log_path):
            seen[(run.trainer, run.config)] = read_method_settings(log_path, run.trainer)
    if not seen:
        return ""
    lines = ["### Provenance", "", "| Method | Config | Trainable params | Settings |", "|---|---|---|---|"]
    for (trainer, config), (settings, params) in seen.items():
        text = ", ".join(f"{k} {v}" for k, v in settings.items()) or "-"
        lines.append(f"| {trainer} | {config} | {params or '-'} | {text} |")
    return "\n".join(lines) + "\n"
