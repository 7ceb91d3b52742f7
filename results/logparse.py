"""Read the final metric of a run from its ``log.txt`` (CoOp / Dassl log format).

A metric line looks like ``* accuracy: 89.5%``. It only counts once the end signal
(a line exactly equal to ``Finish training`` for training runs, ``=> result`` for
eval-only runs) has been seen, because training runs that validate during
training print ``=> result`` blocks that are not the final test. The last match wins.
"""
import re

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
