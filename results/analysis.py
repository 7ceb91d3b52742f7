"""What a trained run learned: a markdown report with figures (tools/analyze.py writes it).

Parts, each computed the same way for every trainer and backbone; a part that does not apply
(no images given, no learned text context, text that depends on each image) is stated instead:
- per-class accuracy and the confusion matrix on a dataset split, the most confused pairs, a
  heat map up to ``HEATMAP_MAX_CLASSES`` classes;
- zero-shot CLIP against the tuned run, per class: which classes gained, which lost. Zero-shot
  CLIP is the same backbone without the method: the frozen image tower with no prompts, adapters
  or LoRA, and class text from the dataset's hand-crafted template (as the ZeroshotCLIP trainer);
- image features before and after tuning, with the class text features: t-SNE (and UMAP when the
  ``umap`` package is importable), and the silhouette score of the image features by class
  (cosine distance, in the feature space, not in the 2-D map);
- the learned text context read as words: each context vector's nearest vocabulary tokens by
  Euclidean and by cosine distance in the token-embedding space (the CoOp paper's reading), and
  the prompt made of each vector's nearest token. The vectors are those the text tower receives
  in its context slots (after the start token) during one class-text pass: layer 0 is the input
  context, layer i the deep prompt written before text block i (MuDPT's fused with the visual
  side, as the tower sees it). Methods without ``ClassPrompts`` learn no text context.

Every number also goes to ``analysis.json`` beside ``report.md``. numpy and scikit-learn do the
statistics; torch is imported inside the functions that run the model, so results/ stays free of
torch at import time.
"""
import io
import json
import os
from dataclasses import dataclass, field

import numpy as np

REPORT_FILE, FACTS_FILE = "report.md", "analysis.json"
TOP_PAIRS = 20               # most confused (true, predicted) pairs listed
HEATMAP_MAX_CLASSES = 50     # a readable heat map
PLOT_MAX_IMAGES = 2000       # images in the 2-D maps and the silhouette (t-SNE is quadratic)
NEAREST_K = 5                # vocabulary tokens listed per context vector
PER_CLASS_CONTEXTS = 5       # classes shown when every class has its own context (CoOp's CSC)
NEEDS_DATASET = ("needs images of a dataset: run with --dataset-config-file configs/datasets/X.yaml "
                 "--root DATA (the classes are then the dataset's, as in the run)")


# ---------------------------------------------------------------------------------- data
def split_items(cfg, split):
    """(class names, image paths, labels) of a dataset split, built as predict.py builds its classes."""
    from dassl.data.datasets import build_dataset
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATASET.NUM_SHOTS = -1  # the evaluation split does not depend on the few-shot sample
    dataset = build_dataset(cfg)
    items = dataset.test if split == "test" else dataset.val
    if not items:
        raise ValueError(f'{cfg.DATASET.NAME} has no "{split}" images; use --split test.')
    return dataset.classnames, [item.impath for item in items], np.array([item.label for item in items])


@dataclass
class SplitOutputs:
    """One pass of the tuned model and of zero-shot CLIP over a split's images."""
    labels: np.ndarray               # (N,)
    tuned_logits: np.ndarray         # (N, C)
    zero_shot_logits: np.ndarray     # (N, C)
    tuned_images: np.ndarray         # (N, E) normalised image features
    zero_shot_images: np.ndarray     # (N, E)
    tuned_text: np.ndarray = None    # (C, E); None when the text depends on each image
    zero_shot_text: np.ndarray = None


def evaluate_split(trainer, batches, template):
    """Run the tuned model and zero-shot CLIP over ``batches`` of (images (B, 3, H, W), labels (B,))."""
    import torch
    import torch.nn.functional as F

    from trainers.clip_prompting import PromptedCLIP, template_text_features
    model = trainer.model.eval()
    with torch.no_grad(), trainer.autocast():
        zero_shot_text = template_text_features(model.text_encoder, trainer.classnames, template)
        text_state = None if model.text_depends_on_image else model.text_state()
        tuned_text = None if model.text_depends_on_image else model.text_features().float()
        parts = {key: [] for key in ("labels", "tuned_logits", "zero_shot_logits", "tuned_images", "zero_shot_images")}
        for images, labels in batches:
            images = images.to(trainer.device)
            tuned_images, state = model.features(images, text_state)
            zero_shot_images = F.normalize(model.image_encoder(images).float(), dim=-1)  # no prompts, adapters, LoRA
            parts["labels"].append(np.asarray(labels))
            parts["tuned_logits"].append(model.logits(tuned_images, state).float().cpu().numpy())
            # CLIP's own scoring (PromptedCLIP's, whatever the method overrides)
            parts["zero_shot_logits"].append(PromptedCLIP.logits(model, zero_shot_images, zero_shot_text).cpu().numpy())
            parts["tuned_images"].append(tuned_images.float().cpu().numpy())
            parts["zero_shot_images"].append(zero_shot_images.cpu().numpy())
    arrays = {key: np.concatenate(value) for key, value in parts.items()}
    return SplitOutputs(**arrays, tuned_text=None if tuned_text is None else tuned_text.cpu().numpy(),
                        zero_shot_text=zero_shot_text.cpu().numpy())


# ---------------------------------------------------------------------------------- statistics
def per_class_accuracy(labels, predictions, num_classes):
    """Accuracy (%) of each class; NaN for a class without images."""
    images = np.bincount(labels, minlength=num_classes)
    correct = np.bincount(labels[predictions == labels], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(images > 0, 100.0 * correct / images, np.nan)


def confusion_matrix(labels, predictions, num_classes):
    """Counts (C, C): row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def most_confused_pairs(matrix, top=TOP_PAIRS):
    """[(true, predicted, count, % of the true class's images)] of the largest off-diagonal counts."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    rows, cols = np.nonzero(off)
    order = sorted(zip(rows, cols), key=lambda rc: (-off[rc], rc[0], rc[1]))[:top]
    totals = matrix.sum(axis=1)
    return [(int(r), int(c), int(off[r, c]), 100.0 * off[r, c] / totals[r]) for r, c in order]


def silhouette(features, labels):
    """Silhouette score of the features grouped by label (cosine distance); None with a reason
    when it is undefined (fewer than 2 classes, or as many classes as images)."""
    from sklearn.metrics import silhouette_score
    classes = len(np.unique(labels))
    if not 2 <= classes <= len(labels) - 1:
        return None, f"undefined with {classes} class(es) among {len(labels)} images"
    return float(silhouette_score(features, labels, metric="cosine")), ""


def plot_subset(num_images, limit=PLOT_MAX_IMAGES, seed=0):
    """Indices of the images the 2-D maps and silhouettes use: all, or a seeded sample of ``limit``."""
    if num_images <= limit:
        return np.arange(num_images)
    return np.sort(np.random.default_rng(seed).choice(num_images, size=limit, replace=False))


def embed_2d(points, method, seed=0):
    """2-D coordinates of ``points`` (N, E): t-SNE, or UMAP."""
    if method == "umap":
        import umap
        return umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, len(points) - 1)).fit_transform(points)
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # installed with scikit-learn
    perplexity = min(30.0, (len(points) - 1) / 3)  # must stay below the number of points
    # One OpenMP thread: a few thousand points do not pay for the threads' synchronisation, which on a
    # busy machine turns seconds into minutes; and the map is the same on every machine.
    with threadpool_limits(limits=1, user_api="openmp"):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)


def umap_available():
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------- text context
@dataclass
class ContextLayer:
    label: str
    vectors: np.ndarray          # (n, D), or (classes, n, D) when every class has its own context
    per_class: bool = False


@dataclass
class TextContext:
    layers: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    absent: str = ""             # why there is nothing to read (the method learns no text context)


def learned_context(model, trainer_name):
    """The learned text context vectors of ``model``, layer by layer, as the text tower receives them."""
    from trainers.clip_prompting.prompts import learned_text_context
    classes = learned_text_context(model)
    if classes is None:
        return TextContext(absent=f"{trainer_name} learns no text context (its class text is a fixed template, or "
                                  "it learns visual prompts, adapters or LoRA only): there are no context vectors "
                                  "to read as words.")
    captured = captured_context_rows(model, classes)
    context = TextContext()
    if captured is None:  # no class-text pass without an image: read the learned parameter itself
        parameter = learner_context_parameter(model, classes)
        if parameter is None:
            return TextContext(absent=f"{trainer_name}'s class text is computed from each image, and its prompt "
                                      "learner holds no (n_ctx, width) context tensor to read instead.")
        context.notes.append("The text context is shifted for each image (computed from its features); shown: "
                             "the learned context before that shift.")
        captured = {0: parameter}
    elif model.text_depends_on_image:
        context.notes.append("Deeper text prompts are computed from each image; shown: the context of the "
                             "class-text pass without an image.")
    if len(captured) > 1:
        context.notes.append("Layers after 0 live in the text transformer's hidden states, not in the "
                             "token-embedding space: their nearest tokens are a reading aid, not words the "
                             "model was given.")
    for index in sorted(captured):
        rows = captured[index]  # (C, n, D)
        shared = bool(np.allclose(rows, rows[:1]))
        label = "layer 0 (input)" if index == 0 else f"layer {index}"
        context.layers.append(ContextLayer(label, rows[0] if shared else rows, per_class=not shared))
    return context


def captured_context_rows(model, classes):
    """{layer: (C, n, D)} rows of the context slots in one class-text pass: the input embeddings
    (layer 0), then every block whose prompt hook rewrote the sequence. None when the method has
    no class-text pass without an image."""
    import torch
    encoder = model.text_encoder
    start, n = encoder.prompt_start, classes.n_ctx
    rows = {}

    def pre_hook(module, args, kwargs):
        if rows or not args:
            return None  # the first text pass only
        rows[0] = args[0][:, start:start + n].detach().float().cpu().numpy()
        hook = kwargs.get("hook")
        if hook is None:
            return None

        def recording(index, x):
            y = hook(index, x)
            if y is not x:  # the hook wrote this block's prompts
                rows[index] = y[:, start:start + n].detach().float().cpu().numpy()
            return y
        return args, dict(kwargs, hook=recording)

    handle = encoder.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model.text_features()
    except NotImplementedError:  # the text exists only per image (CoCoOp)
        return None
    finally:
        handle.remove()
    return rows


def learner_context_parameter(model, classes):
    """(1, n, D): the trainable (n, D) tensor of the module that owns ``classes`` (its prompt learner);
    None if it has none."""
    width = model.text_encoder.width
    for module in model.modules():
        if any(child is classes for child in module.children()):
            for tensor in module.parameters(recurse=False):
                if tuple(tensor.shape) == (classes.n_ctx, width):
                    return tensor.detach().float().cpu().numpy()[None]
    return None


def token_embeddings(model):
    return model.text_encoder.token_embedding.weight.detach().float().cpu().numpy()


def nearest_tokens(vectors, embeddings, k=NEAREST_K, metric="euclidean"):
    """(ids (m, k), distances (m, k)) of the k vocabulary rows nearest each vector (m, D).

    Euclidean: ||e - v||; cosine: 1 - cos(e, v). A float32 scan picks candidates, re-ranked in float64
    (so an exact match, e.g. an untrained word-initialised context, comes first at distance 0)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    candidates = min(len(embeddings), 8 * k)
    if metric == "cosine":
        unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        scores = -(vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)) @ unit.T
    elif metric == "euclidean":
        scores = (embeddings ** 2).sum(axis=1)[None] - 2 * vectors @ embeddings.T
    else:
        raise ValueError(f'metric is "{metric}"; use euclidean or cosine.')
    top = np.argpartition(scores, candidates - 1, axis=1)[:, :candidates]
    ids, distances = [], []
    for vector, row in zip(vectors.astype(np.float64), top):
        chosen = embeddings[row].astype(np.float64)
        if metric == "cosine":
            exact = 1 - chosen @ vector / np.maximum(np.linalg.norm(chosen, axis=1) * np.linalg.norm(vector), 1e-12)
        else:
            exact = np.linalg.norm(chosen - vector, axis=1)
        order = np.lexsort((row, exact))[:k]  # ties: the lower token id
        ids.append(row[order])
        distances.append(exact[order])
    return np.array(ids), np.array(distances)


class Vocabulary:
    """Token id -> text for a text encoder's tokens. OpenAI's BPE (OpenAI CLIP, OpenCLIP's native
    towers) is decoded; another vocabulary (SigLIP's, ...) is shown as ids, with a note."""

    PROBE = "a photo of a red star."

    def __init__(self, text_encoder):
        from clip.simple_tokenizer import SimpleTokenizer
        tokenizer = SimpleTokenizer()
        self.tokenizer = tokenizer if self.same_tokens(text_encoder, tokenizer) else None

    @classmethod
    def same_tokens(cls, text_encoder, tokenizer):
        """Whether the encoder's tokenizer gives OpenAI's ids for a probe text and has its vocabulary size."""
        if text_encoder.token_embedding.weight.shape[0] != len(tokenizer.encoder):
            return False
        expected = tokenizer.encode(cls.PROBE)
        start = text_encoder.prompt_start
        return text_encoder.tokenize([cls.PROBE])[0].tolist()[start:start + len(expected)] == expected

    @property
    def note(self):
        if self.tokenizer is None:
            return ("The backbone's vocabulary is not OpenAI's BPE, which is the one this report can decode: "
                    "tokens are shown as ids (#id).")
        return ""

    def token(self, token_id):
        if self.tokenizer is None:
            return f"#{token_id}"
        return self.tokenizer.decode([int(token_id)]).strip() or repr(self.tokenizer.decoder[int(token_id)])

    def text(self, ids):
        """The prompt the ids spell, one word per vector (word pieces too, so that each vector shows)."""
        return " ".join(self.token(i) for i in ids)


def read_context(context, embeddings, vocabulary):
    """Per layer (and per class, for class-specific context): nearest tokens by both metrics and the
    prompt they decode to."""
    readings = []
    for layer in context.layers:
        sets = [(None, layer.vectors)] if not layer.per_class else list(enumerate(layer.vectors[:PER_CLASS_CONTEXTS]))
        for class_index, vectors in sets:
            entry = {"layer": layer.label, "class": class_index, "slots": []}
            for metric in ("euclidean", "cosine"):
                ids, distances = nearest_tokens(vectors, embeddings, metric=metric)
                entry[f"prompt_{metric}"] = vocabulary.text(ids[:, 0])
                for slot, (row_ids, row_distances) in enumerate(zip(ids, distances)):
                    if len(entry["slots"]) <= slot:
                        entry["slots"].append({})
                    entry["slots"][slot][metric] = [(vocabulary.token(i), float(d))
                                                    for i, d in zip(row_ids, row_distances)]
            readings.append(entry)
    return readings


# ---------------------------------------------------------------------------------- figures
def png_bytes(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    return plt


def class_colours(num_classes):
    plt = pyplot()
    cmap = plt.get_cmap("tab20" if num_classes <= 20 else "hsv")
    return [cmap(i / max(num_classes, 1) if num_classes > 20 else i) for i in range(num_classes)]


def plot_feature_maps(panels, labels, classnames, method):
    """One 2-D map per (title, image features (N, E), text features (C, E) or None): images as dots,
    class text features as stars, both coloured by class."""
    plt = pyplot()
    colours = np.array(class_colours(len(classnames)))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.6))
    for axis, (title, images, text) in zip(np.atleast_1d(axes), panels):
        points = images if text is None else np.concatenate([images, text])
        coords = embed_2d(points, method)
        axis.scatter(coords[:len(images), 0], coords[:len(images), 1], c=colours[labels], s=10, alpha=0.75,
                     linewidths=0)
        if text is not None:
            axis.scatter(coords[len(images):, 0], coords[len(images):, 1], c=colours, s=140, marker="*",
                         edgecolors="black", linewidths=0.6)
        axis.set_title(title, fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
    if len(classnames) <= 20:
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours[i], label=name)
                   for i, name in enumerate(classnames)]
        np.atleast_1d(axes)[-1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7,
                                       frameon=False)
    title = {"tsne": "t-SNE", "umap": "UMAP"}[method]
    fig.suptitle(f"{title} of image features (dots) and class text features (stars)", fontsize=11)
    data = png_bytes(fig)
    plt.close(fig)
    return data


def plot_confusion(matrix, classnames):
    plt = pyplot()
    totals = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(5.0, 0.22 * len(classnames) + 2.5)
    fig, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(100.0 * matrix / totals, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=axis, label="% of the true class", fraction=0.046)
    ticks = np.arange(len(classnames))
    fontsize = 7 if len(classnames) <= 25 else 5
    axis.set_xticks(ticks, classnames, rotation=90, fontsize=fontsize)
    axis.set_yticks(ticks, classnames, fontsize=fontsize)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title("Confusion matrix (tuned run)")
    data = png_bytes(fig)
    plt.close(fig)
    return data


def plot_class_change(rows):
    """Bars of the change in accuracy per class (rows: (name, zero-shot %, tuned %)), sorted."""
    plt = pyplot()
    rows = sorted(rows, key=lambda r: r[2] - r[1])
    if len(rows) > 2 * TOP_PAIRS:
        rows = rows[:TOP_PAIRS] + rows[-TOP_PAIRS:]
    change = [tuned - zero for _, zero, tuned in rows]
    fig, axis = plt.subplots(figsize=(7, max(3.0, 0.22 * len(rows) + 1)))
    axis.barh(range(len(rows)), change, color=["#2a9d8f" if c > 0 else "#e76f51" for c in change])
    axis.set_yticks(range(len(rows)), [name for name, _, _ in rows], fontsize=7)
    axis.axvline(0, color="black", linewidth=0.8)
    axis.set_xlabel("accuracy change, tuned - zero-shot (points)")
    axis.set_title("Per-class change from zero-shot CLIP")
    data = png_bytes(fig)
    plt.close(fig)
    return data


# ---------------------------------------------------------------------------------- report
@dataclass
class Report:
    """What ``write_report`` writes: the facts (analysis.json), the markdown and the figures."""
    facts: dict
    sections: list                      # markdown blocks, in order
    figures: dict = field(default_factory=dict)   # file name -> PNG bytes


def percent(value, sign=False):
    if value is None or np.isnan(value):
        return "n/a"
    return f"{value:+.2f}" if sign else f"{value:.2f}"


def cell(text):
    """Text for a markdown table cell: "|" would end the cell, "<" start an HTML tag (<|endoftext|>)."""
    return str(text).replace("|", "\\|").replace("<", "&lt;")


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def accuracy_sections(outputs, classnames, trainer_name, report):
    """Per-class accuracy, confusions and the zero-shot -> tuned change."""
    num_classes = len(classnames)
    labels = outputs.labels
    tuned = outputs.tuned_logits.argmax(axis=1)
    zero_shot = outputs.zero_shot_logits.argmax(axis=1)
    tuned_acc = per_class_accuracy(labels, tuned, num_classes)
    zero_acc = per_class_accuracy(labels, zero_shot, num_classes)
    images = np.bincount(labels, minlength=num_classes)
    overall = {"tuned": 100.0 * float((tuned == labels).mean()),
               "zero_shot": 100.0 * float((zero_shot == labels).mean())}
    report.facts["accuracy"] = overall
    report.facts["per_class"] = [
        {"class": name, "images": int(images[c]), "zero_shot": None if np.isnan(zero_acc[c]) else float(zero_acc[c]),
         "tuned": None if np.isnan(tuned_acc[c]) else float(tuned_acc[c])} for c, name in enumerate(classnames)]
    report.sections.append(
        "## Accuracy\n\n" + markdown_table(["", "zero-shot CLIP", trainer_name], [
            ["accuracy (%)", percent(overall["zero_shot"]), percent(overall["tuned"])],
            ["images", len(labels), len(labels)]]))
    rows = [[cell(name), int(images[c]), percent(zero_acc[c]), percent(tuned_acc[c]),
             percent(tuned_acc[c] - zero_acc[c], sign=True)] for c, name in enumerate(classnames)]
    report.sections.append("## Per-class accuracy\n\n" + markdown_table(
        ["class", "images", "zero-shot (%)", "tuned (%)", "change"], rows))

    matrix = confusion_matrix(labels, tuned, num_classes)
    report.facts["confusion_matrix"] = matrix.tolist()
    pairs = most_confused_pairs(matrix)
    report.facts["most_confused"] = [{"true": classnames[r], "predicted": classnames[c], "count": n, "share": s}
                                     for r, c, n, s in pairs]
    text = (f"## Confusions\n\nThe {TOP_PAIRS} most confused pairs of the tuned run (share: of the true class's "
            "images).\n\n")
    if pairs:
        text += markdown_table(["true class", "predicted as", "images", "share (%)"],
                               [[cell(classnames[r]), cell(classnames[c]), n, f"{s:.1f}"] for r, c, n, s in pairs])
    else:
        text += "No image was confused: every prediction is right."
    if num_classes <= HEATMAP_MAX_CLASSES:
        report.figures["confusion.png"] = plot_confusion(matrix, classnames)
        text += "\n\n![confusion matrix](confusion.png)"
    else:
        text += f"\n\nNo heat map: {num_classes} classes are more than {HEATMAP_MAX_CLASSES} readable rows."
    report.sections.append(text)

    both = [c for c in range(num_classes) if images[c]]
    gained = [c for c in both if tuned_acc[c] > zero_acc[c]]
    lost = [c for c in both if tuned_acc[c] < zero_acc[c]]
    report.facts["change"] = {"gained": [classnames[c] for c in gained], "lost": [classnames[c] for c in lost],
                              "unchanged": len(both) - len(gained) - len(lost)}

    def listing(chosen, reverse):
        chosen = sorted(chosen, key=lambda c: tuned_acc[c] - zero_acc[c], reverse=reverse)[:TOP_PAIRS]
        return markdown_table(["class", "zero-shot (%)", "tuned (%)", "change"], [
            [cell(classnames[c]), percent(zero_acc[c]), percent(tuned_acc[c]),
             percent(tuned_acc[c] - zero_acc[c], sign=True)]
            for c in chosen]) if chosen else "none"
    report.figures["class_change.png"] = plot_class_change([(classnames[c], zero_acc[c], tuned_acc[c]) for c in both])
    report.sections.append(
        f"## Zero-shot to tuned, per class\n\n{len(gained)} classes gained, {len(lost)} lost, "
        f"{len(both) - len(gained) - len(lost)} unchanged.\n\n### Gained most\n\n{listing(gained, True)}\n\n"
        f"### Lost most\n\n{listing(lost, False)}\n\n![per-class change](class_change.png)")


def feature_section(outputs, classnames, trainer_name, report):
    subset = plot_subset(len(outputs.labels))
    labels = outputs.labels[subset]
    panels, scores = [], {}
    for key, title, images, text in (("zero_shot", "Zero-shot CLIP", outputs.zero_shot_images, outputs.zero_shot_text),
                                     ("tuned", trainer_name, outputs.tuned_images, outputs.tuned_text)):
        score, why = silhouette(images[subset], labels)
        scores[key] = score
        shown = "n/a" if score is None else f"{score:.3f}"
        panels.append((f"{title} (silhouette {shown})", images[subset], text))
        if why:
            scores[f"{key}_why"] = why
    report.facts["silhouette"] = scores
    methods = ["tsne"] + (["umap"] if umap_available() else [])
    text = ("## Features before and after tuning\n\nImage features of zero-shot CLIP and of the tuned run, "
            f"{len(subset)} images coloured by class, with each class's text features (stars). Silhouette score "
            "of the image features by class (cosine distance, in the feature space; -1 to 1, higher: classes "
            "better separated):\n\n" + markdown_table(["", "zero-shot CLIP", trainer_name], [[
                "silhouette", *("n/a" if scores[k] is None else f"{scores[k]:.3f}" for k in ("zero_shot", "tuned"))]]))
    if outputs.tuned_text is None:
        text += (f"\n\n{trainer_name}'s class text depends on each image, so its panel shows no class text "
                 "features.")
    for method in methods:
        name = f"features_{method}.png"
        report.figures[name] = plot_feature_maps(panels, labels, classnames, method)
        text += f"\n\n![{method} of the features]({name})"
    if "umap" not in methods:
        text += "\n\n(UMAP: not installed; `pip install umap-learn` adds a UMAP map beside the t-SNE.)"
    report.sections.append(text)


def context_section(context, readings, vocabulary, report):
    if context.absent:
        report.facts["text_context"] = {"absent": context.absent}
        report.sections.append(f"## Learned text context\n\n{context.absent}")
        return
    report.facts["text_context"] = {"notes": context.notes, "layers": readings}
    text = ("## Learned text context\n\nEach learned context vector's nearest vocabulary tokens in the "
            "token-embedding space, by Euclidean distance and by cosine distance (1 - cos), and the prompt made "
            "of each vector's nearest token.")
    for note in context.notes + ([vocabulary.note] if vocabulary.note else []):
        text += f"\n\n{note}"
    summary = [[r["layer"] + ("" if r["class"] is None else f", class {r['class']}"),
                cell(f'"{r["prompt_euclidean"]}"'), cell(f'"{r["prompt_cosine"]}"')] for r in readings]
    text += "\n\n### Decoded prompts\n\n" + markdown_table(["context", "nearest (Euclidean)", "nearest (cosine)"],
                                                            summary)
    for reading in readings:
        title = reading["layer"] + ("" if reading["class"] is None else f", class {reading['class']}")
        rows = [[slot + 1, cell(", ".join(f"{t} ({d:.3f})" for t, d in tokens["euclidean"])),
                 cell(", ".join(f"{t} ({d:.3f})" for t, d in tokens["cosine"]))]
                for slot, tokens in enumerate(reading["slots"])]
        text += f"\n\n### {title}\n\n" + markdown_table(["vector", "Euclidean", "cosine"], rows)
    report.sections.append(text)


def build_report(trainer, facts, outputs=None, split="test"):
    """The report of ``trainer`` (model built for its classes, trained tensors loaded); ``outputs`` of
    ``evaluate_split`` on the split's images, or None without a dataset."""
    classnames = list(trainer.classnames)
    name = facts["trainer"]
    report = Report(facts=dict(facts, classes=len(classnames), split=split if outputs is not None else None),
                    sections=[])
    lines = [f"# Analysis of {facts['run']}", "",
             f"- trainer: {name}; backbone: {facts['backbone']}; checkpoint: {facts['checkpoint']}",
             f"- classes: {len(classnames)}"]
    if outputs is not None:
        lines.append(f"- images: {len(outputs.labels)} ({split} split of {facts['dataset']})")
        lines.append(f"- zero-shot CLIP: the same backbone without the method, text \"{facts['template']}\"")
    if not trainer.trainable_named_parameters():
        lines.append(f"- {name} learns nothing: its \"tuned\" results are its own zero-shot classifier")
    report.sections.append("\n".join(lines))
    if outputs is None:
        for title in ("Accuracy", "Per-class accuracy", "Confusions", "Zero-shot to tuned, per class",
                      "Features before and after tuning"):
            report.sections.append(f"## {title}\n\nNot computed: this part {NEEDS_DATASET}.")
    else:
        accuracy_sections(outputs, classnames, name, report)
        feature_section(outputs, classnames, name, report)
    context = learned_context(trainer.model, name)
    embeddings = token_embeddings(trainer.model)
    vocabulary = Vocabulary(trainer.model.text_encoder)
    readings = [] if context.absent else read_context(context, embeddings, vocabulary)
    context_section(context, readings, vocabulary, report)
    return report


def write_report(out_dir, report):
    """OUT_DIR/report.md, analysis.json and the figures, each written atomically."""
    from dassl.utils import atomic_write_bytes, atomic_write_text
    os.makedirs(out_dir, exist_ok=True)
    for name, data in report.figures.items():
        atomic_write_bytes(os.path.join(out_dir, name), lambda f, data=data: f.write(data))
    atomic_write_text(os.path.join(out_dir, FACTS_FILE), json.dumps(report.facts, indent=1) + "\n")
    atomic_write_text(os.path.join(out_dir, REPORT_FILE), "\n\n".join(report.sections) + "\n")
