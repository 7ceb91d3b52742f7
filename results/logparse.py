"""Read a run's ``log.txt`` (CoOp / Dassl log format, ours or the original engine's).

The final metric: a line like ``* accuracy: 89.5%``. It only counts once the end signal
(a line exactly equal to ``Finish training`` for training runs, ``=> result`` for
eval-only runs) has been seen, because training runs that validate during
training print ``=> result`` blocks that are not the final test. The last match wins.

The whole log (``read_run_log``): arguments, config dump, dataset summary, few-shot sample,
transforms, training lines and the run's facts (precision, CLIP architecture, ...), for
comparing two runs and for the provenance of a table row. The facts come from the
``run_facts.json`` beside the log; only a run without one (older, or of the original engine)
has them read from the lines printed once while the model is built.
"""
import ast
import os
import re
from dataclasses import dataclass, field
from typing import Optional

from results.run_facts import RUN_FACTS_NAME, read_run_facts

# Dassl >= 0.6.1 prints "Finish training"; older Dassl and many forks print "Finished training".
TRAIN_END_SIGNALS = ("Finish training", "Finished training")
TEST_END_SIGNALS = ("=> result",)

LOG_NAME = "log.txt"


def metric_pattern(keyword):
    """The regular expression CoOp's parser uses for ``* <keyword>: <number>%``."""
    return re.compile(r"\* " + re.escape(keyword) + r": ([\.\deE+-]+)%")


def end_signals(test_log):
    return TEST_END_SIGNALS if test_log else TRAIN_END_SIGNALS


def metric_from_lines(lines, keyword="accuracy", signals=TRAIN_END_SIGNALS):
    """Last value of ``keyword`` after an end signal, or None when there is none."""
    pattern = metric_pattern(keyword)
    seen_end = False
    value = None
    for raw in lines:
        line = raw.strip()
        if line in signals:
            seen_end = True
        if not seen_end:
            continue
        match = pattern.search(line)
        if match:
            try:
                value = float(match.group(1))
            except ValueError:
                # A malformed number such as "1.2.3" is not a result; keep the previous one.
                continue
    return value


def metric_from_log(path, keyword="accuracy", signals=TRAIN_END_SIGNALS):
    """Final metric of one ``log.txt`` file (None if the run has no final result)."""
    with open(path, "r", encoding="utf-8", errors="replace") as handle:
        return metric_from_lines(handle, keyword, signals)


def run_logs(run_dir):
    """The logs of a run folder, oldest first: ``log.txt``, then one ``log.txt-<timestamp>`` per
    later start (the engine, like Dassl, keeps the first log and gives each rerun, a resume
    included, a new file named by its start time)."""
    names = os.listdir(run_dir) if os.path.isdir(run_dir) else []
    later = sorted(n for n in names if n.startswith(LOG_NAME + "-"))
    return [os.path.join(run_dir, n) for n in ([LOG_NAME] if LOG_NAME in names else []) + later]


def final_result(run_dir, keyword="accuracy", signals=TRAIN_END_SIGNALS):
    """(log path, value) of a run's final result: ``log.txt``'s, as CoOp's parser reads it, or, when
    it has none (the run was stopped and resumed), that of the newest later log holding one;
    (log.txt's path, None) when no log of the folder holds one."""
    logs = run_logs(run_dir)
    for path in logs[:1] + logs[:0:-1]:
        value = metric_from_log(path, keyword, signals)
        if value is not None:
            return path, value
    return os.path.join(run_dir, LOG_NAME), None


def log_is_eval_only(path):
    """True when the log's arguments block says the run was ``--eval-only``."""
    with open(path, "r", encoding="utf-8", errors="replace") as handle:
        for raw in handle:
            line = raw.strip()
            if line.startswith("eval_only:"):
                return line.split(":", 1)[1].strip() == "True"
            if line == "** Config **":
                break  # the arguments block is over
    return False


# ------------------------------------------------------------------------ the whole log
# The facts a RunLog holds (keys as in run_facts.json), with the label of the line
# "<label>: <value>" that older runs print once (the first occurrence counts).
FACT_LABELS = {
    "trainable_params": "# trainable params",
    "precision": "Precision",
    "architecture": "CLIP architecture",
    "n_ctx": "Number of context words (tokens)",
    "prompt_text": "Initial context",
}
FACTS_FILE, FACTS_LINES = RUN_FACTS_NAME, "log lines"  # where a RunLog's facts came from
FEWSHOT_PREFIX = "Few-shot sample:"
_ARGUMENTS_BANNER = "** Arguments **"
_CONFIG_BANNER = "** Config **"
_CONFIG_LINE = re.compile(r"^( *)([A-Za-z0-9_]+):(?: (.*))?$")
# Dassl >= 0.6.1: "epoch [1/2] batch [3/5] time ..."; older: "epoch [1/2][3/5]\ttime ...".
_EPOCH_LINE = re.compile(r"^epoch \[(\d+)/(\d+)\](?: batch )?\[(\d+)/(\d+)\]\s+(.*)$")
_METER = re.compile(r"(\S+) (\S+) \(([^)]*)\)")  # "loss 1.2345 (1.3001)"
_LR = re.compile(r"(?:^|\s)lr (\S+)")
_TIMING_METERS = ("time", "data")


@dataclass(frozen=True)
class Iteration:
    """One printed training line: where it is, the meters' current values and the LR."""
    epoch: int
    max_epoch: int
    batch: int
    num_batches: int
    meters: dict     # {"loss": 1.2345, "acc": 65.625}: current values (not the running averages)
    lr: Optional[float]


@dataclass
class RunLog:
    path: str
    arguments: dict = field(default_factory=dict)   # the "** Arguments **" block, as printed
    config: dict = field(default_factory=dict)      # the config dump, flat: {"OPTIM.LR": "0.002"}
    dataset: dict = field(default_factory=dict)     # the summary table: {"# classes": "37", ...}
    fewshot: Optional[str] = None                   # the "Few-shot sample: ..." line
    transforms: dict = field(default_factory=dict)  # {"train": ["+ random flip", ...], "test": [...]}
    iterations: list = field(default_factory=list)  # Iteration, in log order
    facts: dict = field(default_factory=dict)       # FACT_LABELS key -> value (int or str); absent: unknown
    facts_source: str = FACTS_LINES                 # FACTS_FILE or FACTS_LINES
    accuracy: Optional[float] = None                # the final result

    @property
    def opts(self):
        """The command line's KEY VALUE overrides, as pairs (from the arguments block)."""
        try:
            items = ast.literal_eval(self.arguments.get("opts", "None")) or []
        except (ValueError, SyntaxError):
            return []
        return [(str(k), str(v)) for k, v in zip(items[0::2], items[1::2])]


def _block_after(lines, banner):
    """Index of the first line after ``banner`` and the star rule under it (None if absent)."""
    for i, line in enumerate(lines):
        if line.strip() == banner:
            i += 1
            while i < len(lines) and set(lines[i].strip()) == {"*"}:
                i += 1
            return i
    return None


def parse_arguments(lines):
    start = _block_after(lines, _ARGUMENTS_BANNER)
    arguments = {}
    for line in lines[start:] if start is not None else []:
        if set(line.strip()) == {"*"} or (": " not in line and not line.endswith(":")):
            break  # the star rule of the config banner, or anything else: the block is over
        key, _, value = line.partition(":")
        arguments[key.strip()] = value.strip()
    return arguments


def parse_config_dump(lines):
    """The yacs dump after "** Config **", flattened to dotted keys (values as printed)."""
    start = _block_after(lines, _CONFIG_BANNER)
    config, path = {}, []
    for line in lines[start:] if start is not None else []:
        match = _CONFIG_LINE.match(line)
        if not match:
            break
        depth = len(match.group(1)) // 2
        path = path[:depth] + [match.group(2)]
        if match.group(3) is not None:  # "KEY: value" (maybe empty); a bare "KEY:" opens a node
            config[".".join(path)] = match.group(3).strip()
    return config


def parse_dataset_summary(lines):
    """The tabulate table that starts with a "Dataset  <name>" row."""
    for i, line in enumerate(lines[:-1]):
        if re.fullmatch(r"-+ +-+", line.strip()) and lines[i + 1].startswith("Dataset "):
            table = {}
            for row in lines[i + 1:]:
                if re.fullmatch(r"-+ +-+", row.strip()):
                    break
                key, _, value = row.strip().rpartition("  ")
                table[key.strip()] = value.strip()
            return table
    return {}


def parse_transforms(lines):
    transforms, current = {}, None
    for line in lines:
        if line in ("Building transform_train", "Building transform_test"):
            current = transforms.setdefault(line.rsplit("_", 1)[1], [])
        elif current is not None and line.startswith("+ "):
            current.append(line)
        else:
            current = None
    return transforms


def parse_iteration(line):
    match = _EPOCH_LINE.match(line)
    if not match:
        return None
    epoch, max_epoch, batch, num_batches = (int(g) for g in match.groups()[:4])
    rest = match.group(5)
    meters = {}
    for name, value, _ in _METER.findall(rest):
        if name not in _TIMING_METERS:
            try:
                meters[name] = float(value)
            except ValueError:
                continue
    lr = _LR.search(rest)
    try:
        lr = float(lr.group(1)) if lr else None
    except ValueError:
        lr = None
    return Iteration(epoch, max_epoch, batch, num_batches, meters, lr)


def _count(text):
    """A printed count ("1,202,176") as an int."""
    return int(text.replace(",", "")) if re.fullmatch(r"[\d,]+", text) else None


def _leading_int(text):
    """The number a line starts with: DCP prints "2; refined blocks 1..9; ..." after the label."""
    match = re.match(r"\d+", text)
    return int(match.group()) if match else None


def _unquoted(text):
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


FACT_PARSERS = {"trainable_params": _count, "n_ctx": _leading_int, "prompt_text": _unquoted}


def parse_facts(lines):
    """The facts printed while building the model (runs without run_facts.json)."""
    facts = {}
    for line in lines:
        for key, label in FACT_LABELS.items():
            if key not in facts and line.startswith(label + ": "):
                value = FACT_PARSERS.get(key, str)(line[len(label) + 2:].strip())
                if value is not None:
                    facts[key] = value
    return facts


def recorded_facts(run_facts):
    """The FACT_LABELS facts of a run_facts.json (null values: not known)."""
    return {key: run_facts[key] for key in FACT_LABELS if run_facts.get(key) is not None}


def read_run_log(path):
    """Everything tools/compare_runs.py and the provenance table use, from one log.txt."""
    with open(path, "r", encoding="utf-8", errors="replace") as handle:
        lines = [line.rstrip("\n").rstrip("\r") for line in handle]
    log = RunLog(path=path, arguments=parse_arguments(lines), config=parse_config_dump(lines),
                 dataset=parse_dataset_summary(lines), transforms=parse_transforms(lines))
    run_facts = read_run_facts(os.path.dirname(os.path.abspath(path)))
    if run_facts is None:  # an older run: only its printed lines tell
        log.facts = parse_facts(lines)
    else:
        log.facts, log.facts_source = recorded_facts(run_facts), FACTS_FILE
    log.fewshot = next((l for l in lines if l.startswith(FEWSHOT_PREFIX)), None)
    log.iterations = [it for it in map(parse_iteration, lines) if it is not None]
    log.accuracy = metric_from_lines(lines, "accuracy", TRAIN_END_SIGNALS)
    if log.accuracy is None and log.arguments.get("eval_only") == "True":
        log.accuracy = metric_from_lines(lines, "accuracy", TEST_END_SIGNALS)
    return log
