"""Classification evaluator: accuracy, error, macro-F1, per-class result, confusion matrix."""
import os.path as osp
from collections import OrderedDict, defaultdict

import numpy as np
import torch

from ..utils.tools import atomic_write_bytes
from .build import EVALUATOR_REGISTRY


def macro_f1_score(y_true, y_pred):
    """Macro-averaged F1 over the classes present in ``y_true`` (as scikit-learn's
    ``f1_score(average="macro", labels=np.unique(y_true))``, with 0 for 0/0)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = np.unique(y_true)
    if labels.size == 0:
        return 0.0
    scores = []
    for label in labels:
        tp = np.sum((y_pred == label) & (y_true == label))
        fp = np.sum((y_pred == label) & (y_true != label))
        fn = np.sum((y_pred != label) & (y_true == label))
        denom = 2 * tp + fp + fn  # F1 = 2TP / (2TP + FP + FN)
        scores.append(2 * tp / denom if denom > 0 else 0.0)
    return float(np.mean(scores))


def row_normalized_confusion_matrix(y_true, y_pred):
    """Rows: true class, columns: predicted class, each row summing to 1
    (over the labels present in either list, in sorted order)."""
    labels = np.unique(np.concatenate([np.asarray(y_true), np.asarray(y_pred)]))
    index = {lab: i for i, lab in enumerate(labels)}
    cmat = np.zeros((len(labels), len(labels)), dtype=np.float64)
    for t, p in zip(y_true, y_pred):
        cmat[index[t], index[p]] += 1
    row_sums = cmat.sum(axis=1, keepdims=True)
    return np.divide(cmat, row_sums, out=np.zeros_like(cmat), where=row_sums > 0)


class EvaluatorBase:
    def __init__(self, cfg):
        self.cfg = cfg

    def reset(self):
        raise NotImplementedError

    def process(self, mo, gt):
        raise NotImplementedError

    def evaluate(self):
        raise NotImplementedError


@EVALUATOR_REGISTRY.register()
class Classification(EvaluatorBase):
    """Accumulates predictions batch by batch; ``evaluate()`` prints the
    ``=> result`` block and returns the metrics (accuracy first)."""

    def __init__(self, cfg, lab2cname=None, **kwargs):
        super().__init__(cfg)
        self._lab2cname = lab2cname
        self._per_class_res = None
        if cfg.TEST.PER_CLASS_RESULT and lab2cname is None:
            raise ValueError(
                "TEST.PER_CLASS_RESULT is True but no lab2cname (label -> class name) was "
                "given to the Classification evaluator."
            )
        self.reset()

    def reset(self):
        self._correct = 0
        self._total = 0
        self._y_true = []
        self._y_pred = []
        if self.cfg.TEST.PER_CLASS_RESULT:
            self._per_class_res = defaultdict(list)

    def process(self, mo, gt):
        # mo: [batch, num_classes] scores; gt: [batch] labels
        pred = mo.max(1)[1]
        matches = pred.eq(gt).float()
        self._correct += int(matches.sum().item())
        self._total += gt.shape[0]
        self._y_true.extend(gt.data.cpu().numpy().tolist())
        self._y_pred.extend(pred.data.cpu().numpy().tolist())
        if self._per_class_res is not None:
            for i, label in enumerate(gt):
                self._per_class_res[label.item()].append(int(matches[i].item()))

    def evaluate(self):
        results = OrderedDict()
        acc = 100.0 * self._correct / self._total if self._total else 0.0
        err = 100.0 - acc
        macro_f1 = 100.0 * macro_f1_score(self._y_true, self._y_pred)
        results["accuracy"] = acc
        results["error_rate"] = err
        results["macro_f1"] = macro_f1
        print(
            "=> result\n"
            f"* total: {self._total:,}\n"
            f"* correct: {self._correct:,}\n"
            f"* accuracy: {acc:.1f}%\n"
            f"* error: {err:.1f}%\n"
            f"* macro_f1: {macro_f1:.1f}%"
        )

        if self._per_class_res is not None:
            print("=> per-class result")
            accs = []
            for label in sorted(self._per_class_res):
                res = self._per_class_res[label]
                correct, total = sum(res), len(res)
                class_acc = 100.0 * correct / total
                accs.append(class_acc)
                classname = self._lab2cname.get(label, str(label))
                print(f"* class: {label} ({classname})\ttotal: {total:,}\t"
                      f"correct: {correct:,}\tacc: {class_acc:.1f}%")
            mean_acc = float(np.mean(accs)) if accs else 0.0
            print(f"* average: {mean_acc:.1f}%")
            results["perclass_accuracy"] = mean_acc

        if self.cfg.TEST.COMPUTE_CMAT:
            cmat = row_normalized_confusion_matrix(self._y_true, self._y_pred)
            save_path = osp.join(self.cfg.OUTPUT_DIR, "cmat.pt")
            atomic_write_bytes(save_path, lambda f: torch.save(torch.from_numpy(cmat), f))
            print(f"Confusion matrix is saved to {save_path}")

        return results
