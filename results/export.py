"""A trained run as a standalone image classifier (ONNX or TorchScript), and running such a file.

An exported model maps images (B, 3, H, W), preprocessed as its metadata says, to two outputs:
``probabilities`` (B, C), the softmax of the logits, and the ``logits`` (B, C) themselves.

- The text is computed once. A method whose class text does not depend on the image gets its
  text state for the given classes computed by the toolbox and baked in as a constant: the file
  holds the image path (frozen image tower with the method's visual prompts or adapters), the
  fixed text state, the logit scale and bias. The text tower is not in the file.
- LoRA is merged. One eager pass through the reference path records the merged weights
  (W + scale * B A, ``backbones.blocks.merged_weights``) that the library's blocks are called
  with; they are written into those blocks and the low-rank updates removed, so the file runs
  plain attention on merged weights, whatever the backbone family's weight layout.
- Text that depends on the image is refused: CoCoOp's and DCP's (by default) class prompts are
  computed from each image, so there is nothing to bake in, and their per-image text passes do
  not trace into a graph that takes any batch size. ``predict.py --model-dir`` runs them.
- Every export is checked: the written file is loaded (onnxruntime / torch.jit.load) and run on
  a random batch of another size than the traced one; its probabilities must equal the toolbox's
  within ``TOLERANCE``, else nothing is written.

Metadata (ONNX ``metadata_props``; TorchScript ``_extra_files["metadata.json"]``): the trainer,
the backbone, the class names, the run's test preprocessing (INPUT.SIZE, PIXEL_MEAN, PIXEL_STD,
INTERPOLATION, TRANSFORMS) and the output names. ``ExportedModel`` reads either format back and
builds the preprocessing from it.

torch, onnx and onnxruntime are imported inside the functions that need them: results/ stays
free of torch at import time.
"""
import contextlib
import io
import json
import os
import warnings
import zipfile

FORMATS = ("onnx", "torchscript")
FORMAT_TAG = "mudpt-toolbox-export"  # metadata "format": marks files written here
VERSION = 1
METADATA_FILE = "metadata.json"      # the TorchScript archive's extra file
INPUT_NAME = "images"
OUTPUT_NAMES = ("probabilities", "logits")
JSON_KEYS = ("version", "classnames", "input_size", "pixel_mean", "pixel_std", "transforms", "outputs")
REQUIRED_KEYS = ("format", "trainer", "classnames", "input_size", "pixel_mean", "pixel_std", "interpolation",
                 "transforms")
TOLERANCE = 1e-4       # largest difference of a probability from the toolbox's
TRACE_BATCH, CHECK_BATCH = 2, 3


class ExportError(Exception):
    """A run that cannot be exported, or a file that is not an export: the message says why."""


# ---------------------------------------------------------------------------------- metadata
def export_metadata(cfg, classnames):
    """What a user of the file needs besides the graph: classes, preprocessing, provenance."""
    size = list(cfg.INPUT.SIZE)
    return {
        "format": FORMAT_TAG,
        "version": VERSION,
        "trainer": cfg.TRAINER.NAME,
        "backbone": cfg.MODEL.BACKBONE.NAME,
        "classnames": list(classnames),
        "input_size": size,
        "pixel_mean": list(cfg.INPUT.PIXEL_MEAN),
        "pixel_std": list(cfg.INPUT.PIXEL_STD),
        "interpolation": cfg.INPUT.INTERPOLATION,
        "transforms": list(cfg.INPUT.TRANSFORMS),
        "outputs": list(OUTPUT_NAMES),
        "preprocessing": (f"RGB image; resize the smaller edge to {max(size)} ({cfg.INPUT.INTERPOLATION}); "
                          f"center-crop {size[0]}x{size[1]}; scale to [0, 1]; subtract pixel_mean and divide "
                          "by pixel_std per channel (if transforms lists normalize); NCHW float32"),
    }


def encode_metadata(metadata):
    """String values for ONNX metadata_props: lists and numbers as JSON, strings as they are."""
    return {key: json.dumps(value) if key in JSON_KEYS else str(value) for key, value in metadata.items()}


def decode_metadata(strings, path):
    metadata = {}
    for key, value in strings.items():
        try:
            metadata[key] = json.loads(value) if key in JSON_KEYS else value
        except ValueError as exc:
            raise ExportError(f'"{path}": metadata entry "{key}" is not valid JSON ({exc}); the file was '
                              "changed after export. Export the run again with tools/export.py.") from exc
    return check_metadata(metadata, path)


def check_metadata(metadata, path):
    if metadata.get("format") != FORMAT_TAG:
        raise ExportError(f'"{path}" has no metadata of tools/export.py (its classes and preprocessing are '
                          "unknown); export the run with: python tools/export.py RUN_DIR --classnames F "
                          "--format onnx|torchscript OUT.")
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        raise ExportError(f'"{path}": the export metadata lacks {", ".join(missing)}; export the run again '
                          "with tools/export.py.")
    return metadata


# ---------------------------------------------------------------------------------- model
def fixed_text_classifier(model, text_state):
    """An nn.Module images -> (probabilities, logits) with ``text_state`` fixed (the class is defined
    here, not at module level, so that importing results.export loads no torch)."""
    import torch

    class FixedTextClassifier(torch.nn.Module):
        """The image path of a PromptedCLIP scored against a text state computed once.

        The state is a tensor (C, E), or a named tuple of tensors (DPT's), kept as buffers."""

        def __init__(self):
            super().__init__()
            self.model = model
            self.state_type = None if torch.is_tensor(text_state) else type(text_state)
            parts = [text_state] if self.state_type is None else list(text_state)
            for index, part in enumerate(parts):
                self.register_buffer(f"text_state_{index}", part.detach().clone())
            self.num_parts = len(parts)

        def text_state(self):
            parts = [getattr(self, f"text_state_{i}") for i in range(self.num_parts)]
            return parts[0] if self.state_type is None else self.state_type(*parts)

        def forward(self, images):
            logits = self.model(images, text_state=self.text_state()).float()
            return torch.softmax(logits, dim=-1), logits

    return FixedTextClassifier().eval()


def exportable_text_state(trainer):
    """The run's text state for its classes; refused when the text depends on each image."""
    model = trainer.model
    if model.text_depends_on_image:
        raise ExportError(
            f"{trainer.cfg.TRAINER.NAME}'s class text depends on each image (its prompts are computed from the "
            "image features), so there is no fixed text to bake into a standalone model: the file would need the "
            "whole text tower and one text pass per image, which does not export as a graph for any batch size. "
            "Classify images with the run folder instead: python predict.py --model-dir RUN_DIR ...")
    return model.text_state()


@contextlib.contextmanager
def recorded_block_weights():
    """While active, every call the reference path makes to a library block with LoRA-merged weights
    is recorded as (block, {parameter name: merged tensor})."""
    import backbones.blocks as blocks
    original = blocks.functional_call
    calls = []

    def recording(module, weights, args, kwargs=None):
        calls.append((module, weights))
        return original(module, weights, args, kwargs)

    blocks.functional_call = recording
    try:
        yield calls
    finally:
        blocks.functional_call = original


def merge_lora(model, images, text_state):
    """Merge every low-rank update of the image path into the weights it updates, then drop the
    updates (both towers: the text state is already computed). Returns the merged block count."""
    import torch

    from trainers.clip_prompting import EncoderLoRA, set_fast_paths
    lora_modules = [m for m in model.modules() if isinstance(m, EncoderLoRA)]
    if not lora_modules:
        return 0
    set_fast_paths(model, False)  # the reference path merges LoRA into the library's blocks
    try:
        with torch.no_grad(), recorded_block_weights() as calls:
            model(images, text_state=text_state)
    finally:
        set_fast_paths(model, True)
    with torch.no_grad():
        for block, weights in calls:
            for name, weight in weights.items():
                block.get_parameter(name).copy_(weight)
    for module in lora_modules:
        module.clear()  # EncoderLoRA.at(i) is None now: no block gets an update
    return len(calls)


def random_images(cfg, batch):
    import torch
    generator = torch.Generator().manual_seed(0)
    height, width = cfg.INPUT.SIZE
    return torch.randn(batch, 3, height, width, generator=generator)


@contextlib.contextmanager
def quiet_tracer():
    """The tracer warns about Python values it records as constants (shapes, EOT positions of the
    fixed classes); they are constant by design here, and the check after export proves it."""
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def to_onnx(classifier, example, metadata):
    """ONNX bytes (batch axis dynamic) with the metadata in metadata_props.

    The TorchScript-based exporter (``dynamo=False``): it exports every method here, twice as fast
    as the torch.export-based one and without its onnxscript dependency; torch 2.13 calls it legacy,
    so its deprecation notices are silenced here (``dynamo=True`` with a dynamic batch also works)."""
    import onnx
    import torch
    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    with torch.no_grad(), quiet_tracer(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        torch.onnx.export(classifier, (example,), buffer, dynamo=False, input_names=[INPUT_NAME],
                          output_names=list(OUTPUT_NAMES), dynamic_axes=axes, do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in encode_metadata(metadata).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def to_torchscript(classifier, example, metadata, trainer_name):
    """A frozen TorchScript archive (parameters inlined, the unused text tower dropped) with the
    metadata as an extra file."""
    import torch
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), quiet_tracer(), torchscript_deprecation():
            traced = torch.jit.trace(classifier, example, check_trace=False)
            frozen = torch.jit.freeze(traced.eval(), optimize_numerics=False)
            torch.jit.save(frozen, buffer, _extra_files={METADATA_FILE: json.dumps(metadata, indent=1)})
    except RuntimeError as exc:
        if "Python function" not in str(exc):
            raise
        raise ExportError(f"{trainer_name} cannot be exported to TorchScript: its model calls a Python autograd "
                          f"function, which TorchScript cannot record ({str(exc).strip().splitlines()[0]}). "
                          "Use --format onnx.") from exc
    return buffer.getvalue()


@contextlib.contextmanager
def torchscript_deprecation():
    """torch 2.13 marks torch.jit deprecated in favour of torch.export; TorchScript is still the format
    asked for (loadable from C++ and older torch), so the notice is not repeated at every call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
        yield


def export_run(trainer, classnames, fmt, path):
    """Write ``trainer``'s model (built for ``classnames``, trained tensors loaded) as ``fmt`` to
    ``path``; returns the largest difference of the file's probabilities from the toolbox's."""
    import torch

    from dassl.utils import atomic_write_bytes
    if fmt not in FORMATS:
        raise ExportError(f'--format is "{fmt}"; use one of {", ".join(FORMATS)}.')
    cfg, model = trainer.cfg, trainer.model
    model.eval()
    metadata = export_metadata(cfg, classnames)
    example, check = random_images(cfg, TRACE_BATCH), random_images(cfg, CHECK_BATCH)
    with torch.no_grad():
        text_state = exportable_text_state(trainer)
        expected = torch.softmax(model(check, text_state=text_state).float(), dim=-1)
    merge_lora(model, example, text_state)
    classifier = fixed_text_classifier(model, text_state)
    if fmt == "onnx":
        data = to_onnx(classifier, example, metadata)
    else:
        data = to_torchscript(classifier, example, metadata, cfg.TRAINER.NAME)
    exported = ExportedModel.from_bytes(data, fmt, path)
    difference = float(abs(exported.probabilities(check.numpy()) - expected.numpy()).max())
    if not difference <= TOLERANCE:
        raise ExportError(f"the exported {fmt} model's probabilities differ from the toolbox's by {difference:.2e} "
                          f"(more than {TOLERANCE:g}) on a random batch; nothing was written. Please report this "
                          f"with the run's trainer ({cfg.TRAINER.NAME}) and backbone ({cfg.MODEL.BACKBONE.NAME}).")
    atomic_write_bytes(path, lambda f: f.write(data))
    return difference


# ---------------------------------------------------------------------------------- running
def detect_format(path):
    """TorchScript archives are zip files; anything else is read as ONNX."""
    return "torchscript" if zipfile.is_zipfile(path) else "onnx"


class ExportedModel:
    """An exported file, ready to score preprocessed images (numpy (B, 3, H, W) float32)."""

    def __init__(self, run, metadata):
        self._run, self.metadata = run, metadata

    @property
    def classnames(self):
        return self.metadata["classnames"]

    @classmethod
    def load(cls, path):
        if not os.path.isfile(path):
            raise ExportError(f'--exported "{path}" does not exist; pass a file written by tools/export.py.')
        with open(path, "rb") as handle:
            data = handle.read()
        return cls.from_bytes(data, detect_format(path), path)

    @classmethod
    def from_bytes(cls, data, fmt, path):
        return cls.from_onnx(data, path) if fmt == "onnx" else cls.from_torchscript(data, path)

    @classmethod
    def from_onnx(cls, data, path):
        import onnxruntime
        try:
            session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise ExportError(f'"{path}" is neither a TorchScript archive nor a readable ONNX model '
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}).") from exc
        metadata = decode_metadata(session.get_modelmeta().custom_metadata_map, path)

        def run(images):
            return tuple(session.run(list(OUTPUT_NAMES), {INPUT_NAME: images}))
        return cls(run, metadata)

    @classmethod
    def from_torchscript(cls, data, path):
        import torch
        extra = {METADATA_FILE: ""}
        try:
            with torchscript_deprecation():
                module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
        except RuntimeError as exc:
            raise ExportError(f'"{path}" is a zip file but not a TorchScript archive ({str(exc).splitlines()[0]}); '
                              "pass a file written by tools/export.py.") from exc
        if not extra[METADATA_FILE]:
            raise ExportError(f'"{path}" is a TorchScript archive without {METADATA_FILE}, so not written by '
                              "tools/export.py; its classes and preprocessing are unknown.")
        try:
            metadata = json.loads(extra[METADATA_FILE])
        except ValueError as exc:
            raise ExportError(f'"{path}": its {METADATA_FILE} is not valid JSON ({exc}); export the run '
                              "again with tools/export.py.") from exc
        check_metadata(metadata, path)

        def run(images):
            with torch.no_grad():
                return tuple(output.numpy() for output in module(torch.from_numpy(images)))
        return cls(run, metadata)

    def outputs(self, images):
        """(probabilities (B, C), logits (B, C)) of preprocessed images (B, 3, H, W)."""
        return self._run(images.astype("float32", copy=False))

    def probabilities(self, images):
        return self.outputs(images)[0]

    def transform(self):
        """The run's test transform, rebuilt from the metadata with the engine's build_transform."""
        from dassl.config import get_cfg_default
        from dassl.data.transforms import build_transform
        cfg = get_cfg_default()
        cfg.INPUT.SIZE = tuple(self.metadata["input_size"])
        cfg.INPUT.PIXEL_MEAN = list(self.metadata["pixel_mean"])
        cfg.INPUT.PIXEL_STD = list(self.metadata["pixel_std"])
        cfg.INPUT.INTERPOLATION = self.metadata["interpolation"]
        cfg.INPUT.TRANSFORMS = tuple(self.metadata["transforms"])
        return build_transform(cfg, is_train=False)
