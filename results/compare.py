"""Compare two runs from their log.txt: what differs, in the order a run goes, and where they part.

The sections follow a run's timeline: config, dataset summary, few-shot sample, transforms,
model (parameter count, precision, CLIP architecture, context length and prompt text: from the
run's run_facts.json, or the lines an older run printed), LR per epoch, loss per
printed iteration, final result. Values are compared as printed (the LR
to 4 significant decimals, the loss to 4 decimals, as Dassl prints them), so a run of this
engine compares with one of the original engine, in either epoch-line format.
"""
from dataclasses import dataclass, field
from typing import Optional

from results.logparse import FACT_LABELS, FACTS_FILE

# Where a run lives, not what it does: differences are expected and not counted.
PATH_KEYS = ("OUTPUT_DIR", "DATASET.ROOT", "MODEL.BACKBONE.PATH", "RESUME")
SHOWN = 10  # difference lines printed per section


@dataclass
class Section:
    title: str
    differences: list = field(default_factory=list)  # "what: A | B" lines
    notes: list = field(default_factory=list)        # what could not be compared, and why
    first: Optional[str] = None                      # the first difference, in a few words
    compared: bool = True                            # False: absent from one or both logs

    @property
    def differs(self):
        return bool(self.differences)


def _pair(a, b):
    shown = ["(absent)" if v is None else str(v) for v in (a, b)]
    return f"{shown[0]} | {shown[1]}"


def _missing(title, a, b, what):
    """A section that one log lacks (an older engine, an eval-only run): noted, not compared."""
    if a and b:
        return None
    if not a and not b:
        return Section(title, notes=["in neither log"], compared=False)
    side = "B" if a else "A"
    return Section(title, notes=[f"not in {side}'s log: {what}"], compared=False)


def compare_config(a, b):
    section = _missing("Config", a.config, b.config, "no '** Config **' block")
    if section:
        return section
    section = Section("Config")
    nodes_a = {k.rsplit(".", 1)[0] for k in a.config if k.startswith("TRAINER.")}
    nodes_b = {k.rsplit(".", 1)[0] for k in b.config if k.startswith("TRAINER.")}
    foreign, one_sided = set(), []
    for key in sorted(set(a.config) | set(b.config)):
        va, vb = a.config.get(key), b.config.get(key)
        node = key.rsplit(".", 1)[0]
        if va == vb:
            continue
        if key in PATH_KEYS:
            section.notes.append(f"{key} differs: a path, not compared")
        elif node.startswith("TRAINER.") and (node not in nodes_a or node not in nodes_b):
            foreign.add(node)  # a method the other code base does not declare
        elif va is None or vb is None:
            one_sided.append(f"{key}: {_pair(va, vb)}")  # a key one engine version lacks
        else:
            section.differences.append(f"{key}: {_pair(va, vb)}")
    section.differences += one_sided  # values that differ come first: they point at the cause
    if foreign:
        section.notes.append(f"method nodes in one log only, not compared: {', '.join(sorted(foreign))}")
    if section.differences:
        section.first = f"config {section.differences[0]}"
    return section


def compare_mapping(title, a, b, what):
    section = _missing(title, a, b, what)
    if section:
        return section
    section = Section(title)
    for key in list(a) + [k for k in b if k not in a]:
        if a.get(key) != b.get(key):
            section.differences.append(f"{key}: {_pair(a.get(key), b.get(key))}")
    if section.differences:
        section.first = f"{title.lower()} {section.differences[0]}"
    return section


def compare_fewshot(a, b):
    section = _missing("Few-shot sample", a.fewshot, b.fewshot,
                       "no 'Few-shot sample' line (all images, or an engine that does not print it)")
    if section:
        return section
    section = Section("Few-shot sample")
    if a.fewshot != b.fewshot:
        section.differences.append(_pair(a.fewshot, b.fewshot))
        section.first = "few-shot sample (other images)"
    return section


def compare_transforms(a, b):
    section = _missing("Transforms", a.transforms, b.transforms, "no 'Building transform_*' lines")
    if section:
        return section
    section = Section("Transforms")
    for split in ("train", "test"):
        steps_a, steps_b = a.transforms.get(split, []), b.transforms.get(split, [])
        for i in range(max(len(steps_a), len(steps_b))):
            sa = steps_a[i] if i < len(steps_a) else None
            sb = steps_b[i] if i < len(steps_b) else None
            if sa != sb:
                section.differences.append(f"{split} step {i + 1}: {_pair(sa, sb)}")
    if section.differences:
        section.first = f"transforms, {section.differences[0]}"
    return section


def _fact_text(key, value):
    return f"{value:,}" if key == "trainable_params" else value  # as the log prints it


def compare_model(a, b):
    """The model's facts (parameter count, precision, CLIP, context length, prompt text)."""
    section = _missing("Model", a.facts, b.facts, f"no {FACTS_FILE} and none of the model lines")
    if section:
        return section
    section = Section("Model")
    for key, label in FACT_LABELS.items():
        va, vb = a.facts.get(key), b.facts.get(key)
        if va is not None and vb is not None and va != vb:
            section.differences.append(f"{label}: {_pair(_fact_text(key, va), _fact_text(key, vb))}")
        elif (va is None) != (vb is None):
            section.notes.append(f"'{label}' is known for {'A' if vb is None else 'B'} only; not compared")
    if a.facts_source != b.facts_source:
        section.notes.append(f"facts of A from its {a.facts_source}, of B from its {b.facts_source}")
    if section.differences:
        section.first = f"model, {section.differences[0]}"
    return section


def lr_per_epoch(log):
    """The LR printed on the first training line of each epoch."""
    lrs = {}
    for it in log.iterations:
        if it.lr is not None:
            lrs.setdefault(it.epoch, it.lr)
    return lrs


def _lr_text(lr):
    return None if lr is None else f"{lr:.4e}"


def compare_lr(a, b):
    lrs_a, lrs_b = lr_per_epoch(a), lr_per_epoch(b)
    section = _missing("LR per epoch", lrs_a, lrs_b, "no training lines with an lr")
    if section:
        return section
    section = Section("LR per epoch")
    epochs = sorted(set(lrs_a) | set(lrs_b))
    for epoch in epochs:
        la, lb = _lr_text(lrs_a.get(epoch)), _lr_text(lrs_b.get(epoch))
        if la != lb:
            section.differences.append(f"epoch {epoch}: {_pair(la, lb)}")
            section.first = section.first or f"LR at epoch {epoch}"
    if section.differences:
        section.title += f": {len(section.differences)} of {len(epochs)} epochs differ"
    return section


def _losses(log):
    return {(it.epoch, it.batch): f"{it.meters['loss']:.4f}" for it in log.iterations if "loss" in it.meters}


def compare_losses(a, b):
    losses_a, losses_b = _losses(a), _losses(b)
    section = _missing("Loss per printed iteration", losses_a, losses_b, "no training lines with a loss")
    if section:
        return section
    section = Section("Loss per printed iteration")
    steps = sorted(set(losses_a) | set(losses_b))
    for epoch, batch in steps:
        la, lb = losses_a.get((epoch, batch)), losses_b.get((epoch, batch))
        if la != lb:
            section.differences.append(f"epoch {epoch} batch {batch}: {_pair(la, lb)}")
            section.first = section.first or f"loss at epoch {epoch} batch {batch}"
    if section.differences:
        section.title += f": {len(section.differences)} of {len(steps)} lines differ"
    return section


def compare_result(a, b):
    section = _missing("Result", a.accuracy is not None, b.accuracy is not None, "no final accuracy")
    if section:
        return section
    section = Section("Result")
    if a.accuracy != b.accuracy:
        section.differences.append(f"accuracy: {_pair(a.accuracy, b.accuracy)}")
        section.first = f"final accuracy {_pair(a.accuracy, b.accuracy)}"
    return section


def compare_logs(a, b):
    """The sections, in the order a run goes through them."""
    return [
        compare_config(a, b),
        compare_mapping("Dataset summary", a.dataset, b.dataset, "no dataset summary table"),
        compare_fewshot(a, b),
        compare_transforms(a, b),
        compare_model(a, b),
        compare_lr(a, b),
        compare_losses(a, b),
        compare_result(a, b),
    ]


def report(a, b, sections):
    lines = [f"A: {a.path}", f"B: {b.path}", ""]
    for section in sections:
        state = "differs" if section.differs else ("same" if section.compared else "not compared")
        title = section.title if ":" in section.title else f"{section.title}: {state}"
        lines.append(title)
        lines += [f"  {d}" for d in section.differences[:SHOWN]]
        if len(section.differences) > SHOWN:
            lines.append(f"  ... and {len(section.differences) - SHOWN} more")
        lines += [f"  ({n})" for n in section.notes]
    lines.append("")
    firsts = [s.first for s in sections if s.differs]
    if firsts:
        lines.append(f"The runs differ. First divergence: {firsts[0]}.")
        if firsts[1:]:
            lines.append(f"Then: {'; '.join(firsts[1:])}.")
    else:
        compared = [s.title.lower() for s in sections if s.compared]
        lines.append(f"The runs match ({', '.join(compared)}).")
    return "\n".join(lines) + "\n"
