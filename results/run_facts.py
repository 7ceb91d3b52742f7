"""``run_facts.json``: what a run is (backbone, trainable parameters, prompt, precision), as data.

train.py writes it beside ``config.yaml`` from the trainer's ``run_facts()``; the provenance
table and tools/compare_runs.py read it, and read the printed log lines only for older runs
that have no such file. Keys (format 1): backbone, family, architecture, trainer,
trainable_params, trainable_names, n_ctx (null: no learned text context), prompt_text,
precision (what ran on the device), dataset, seed, descriptions (null, or the source and
sha256 of the class descriptions the run read), format.
"""
import json
import os

RUN_FACTS_NAME = "run_facts.json"
FORMAT = 1


class RunFactsError(ValueError):
    """A run_facts.json that cannot be read as this toolbox writes it."""


def write_run_facts(folder, facts):
    """Write ``facts`` (a JSON-able dict) to ``folder``/run_facts.json, atomically."""
    # imported on use: the engine package loads torch, which reading the facts does not need
    from dassl.utils import atomic_write_text
    text = json.dumps(dict(facts, format=FORMAT), indent=2, sort_keys=True)
    atomic_write_text(os.path.join(folder, RUN_FACTS_NAME), text + "\n")


def read_run_facts(folder):
    """The facts recorded in ``folder``; None for a run written before run_facts.json existed."""
    path = os.path.join(folder, RUN_FACTS_NAME)
    if not os.path.isfile(path):
        return None
    fix = "Delete it to read the run's facts from its log.txt instead, or run the run again."
    try:
        with open(path, encoding="utf-8") as handle:
            facts = json.load(handle)
    except (OSError, ValueError) as exc:
        raise RunFactsError(f'Cannot read "{path}" ({exc}). {fix}') from exc
    if not isinstance(facts, dict) or not isinstance(facts.get("format"), int):
        raise RunFactsError(f'"{path}" is not a run_facts.json of this toolbox (a JSON object with an '
                            f'integer "format"). {fix}')
    if facts["format"] > FORMAT:
        raise RunFactsError(f'"{path}" has format {facts["format"]}, newer than this toolbox reads '
                            f"({FORMAT}); update the toolbox.")
    return facts
