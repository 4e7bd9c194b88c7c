"""The project a build works on: config, model and reference data, loaded once and shared by every target."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gpuxc.build.memory import activation_bytes
from gpuxc.errors import ModelError, ReferenceError_
from gpuxc.project import isolation  # the untrusted model's first load: in a child process
from gpuxc.project.calibration import load_validation_samples
from gpuxc.project.config import GpuxConfig
from gpuxc.project.config_load import find_config, load_config
from gpuxc.project.model import LoadedModel, ModelSignature
from gpuxc.project.preprocess_graph import with_image_preprocessing
from gpuxc.project.preprocessing import (
    ImagePreprocessing,
    Preprocessing,
    TextPreprocessing,
    resolve_preprocessing,
    text_encoder,
    tokenizer_path,
)
from gpuxc.project.reference import (
    DEFAULT_DIM,
    DEFAULT_SPATIAL,
    FALLBACK_SIZES,
    generate,
    index_bounds,
    make_inputs,
    resolve_shapes,
)
from gpuxc.project.reference_runtime import ONNXRUNTIME, ReferenceRun, run_reference
from gpuxc.project.signature import check_signature

Progress = Callable[[str], None]
# Lossy variants are verified on the reference input plus this many more.
EXTRA_SAMPLES = 4
# Text models without calibration data are verified on real sentences (of several lengths and
# scripts) through the project's tokenizer, not on random token ids.
REFERENCE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "A compiled model is only as good as the numbers it gives on the device it lands on.",
    "short",
    "Où est la gare ? Die Straße ist nass. 東京は雨です。",
    "Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex. Complex is "
    "better than complicated. Flat is better than nested. Sparse is better than dense. Readability counts.",
)


@dataclass
class Project:
    """A loaded project: config, model and reference data, shared by every target."""

    config: GpuxConfig
    model: LoadedModel
    reference_inputs: dict[str, np.ndarray]
    reference_outputs: dict[str, np.ndarray]
    reference_origin: Literal["generated", "calibration", "sentences"]
    reference_shapes: dict[str, list[int]] = field(default_factory=dict)
    # What computed reference_outputs from the source file, and why the runtimes before it could not.
    reference_runtime: str = ONNXRUNTIME
    reference_fallbacks: list[str] = field(default_factory=list)
    reference_cross_check: str | None = None
    # From calibration data: the verification samples after the reference one, and whether they (and
    # the reference) are among the samples the quantizers calibrate on (the data held no more).
    validation_feeds: list[dict[str, np.ndarray]] = field(default_factory=list)
    calibration_overlap: bool = False
    # gpux.yml's preprocessing settled against the model; with images, ``model`` is the source with
    # the preprocessing nodes prepended (gpuxc/project/preprocess_graph.py).
    preprocessing: Preprocessing | None = None

    @functools.cached_property
    def extra_references(self) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """(inputs, source outputs) beyond the reference, for judging lossy variants: later
        calibration samples when the project has calibration data, else generated inputs (other
        seeds, the reference's shapes). Computed once, shared by every candidate and target."""
        if self.reference_origin != "generated":  # calibration samples or sentences after the reference
            feeds = self.validation_feeds
        else:
            bounds = index_bounds(self.model.proto)
            seed = self.config.build.seed
            feeds = [generate(self.model.signature, self.reference_shapes, seed + 7919 * (i + 1), bounds)
                     for i in range(EXTRA_SAMPLES)]  # fmt: skip
        dtypes = io_dtypes(self.model.signature)
        return [(f, run_reference(self.model.path, f, dtypes, self.reference_runtime).outputs) for f in feeds]

    @functools.cached_property
    def activation_bytes(self) -> int:
        return activation_bytes(self.model.proto, self.reference_shapes)


def load_project(path: Path, config_path: Path | None = None, progress: Progress | None = None) -> Project:
    """The project at ``path`` (a folder with gpux.yml, or ``config_path``), loaded and checked."""
    say = progress or (lambda _msg: None)
    config = load_config(find_config(path, config_path))
    say(f"config {config.path.name}: {config.name} {config.version}")
    return project_for(config, say)


def project_for(config: GpuxConfig, say: Progress) -> Project:
    """Load the model of ``config``, check it against the config, compute the reference."""
    try:
        model_path = config.model_path
        found = model_path.is_file()
    except OSError as exc:  # a name too long for the file system, a permission denied on the way
        raise ModelError(f"{config.where('model', 'source')}: model file '{config.model.source}' cannot be "
                         f"opened ({exc.strerror})") from None  # fmt: skip
    if not found:
        raise ModelError(f"{config.where('model', 'source')}: model file '{config.model.source}' not found")
    try:
        loaded = isolation.load_model(model_path)
    except ModelError as exc:
        raise type(exc)(f"{config.where('model', 'source')}: {exc.message}", hint=exc.hint) from None
    sig = loaded.signature
    say(f"model {model_path.name}: {len(sig.inputs)} inputs, {len(sig.outputs)} outputs, {sig.node_count} nodes, "
        f"opsets {sig.opsets}")  # fmt: skip
    check_signature(config, sig)
    if loaded.upgrade is not None:
        say(f"model: {loaded.upgrade.summary()}")
    preprocessing = resolve_preprocessing(config, sig)
    if isinstance(preprocessing, ImagePreprocessing):
        loaded = with_image_preprocessing(loaded, preprocessing, config.where("preprocessing"))
        sig = loaded.signature
        say(f"preprocessing: {preprocessing.summary()}")
    elif preprocessing is not None:
        say(f"preprocessing: text through {config.preprocessing.tokenizer} (max_length {preprocessing.max_length}, "
            f"padding {preprocessing.padding}); the runner tokenises")  # fmt: skip
    validation: list[dict[str, np.ndarray]] = []
    overlap = False
    cal = config.build.calibration
    if cal is not None and cal.data is not None:
        validation, overlap = load_validation_samples(config, sig, EXTRA_SAMPLES + 1, preprocessing=preprocessing)
        inputs = validation[0]
        run = run_reference(loaded.path, inputs, io_dtypes(sig))
        shapes = {k: list(v.shape) for k, v in inputs.items()}
        origin: Literal["generated", "calibration", "sentences"] = "calibration"
        if overlap:
            say(f"reference: build.calibration.data holds no sample beyond the {cal.samples} used to calibrate: lossy "
                "variants are judged on calibration samples (give more to judge them on unseen ones)")  # fmt: skip
    elif isinstance(preprocessing, TextPreprocessing) and (sentences := _sentence_feeds(config, loaded, preprocessing)):
        validation = sentences
        inputs = validation[0]
        run = run_reference(loaded.path, inputs, io_dtypes(sig))
        shapes = {k: list(v.shape) for k, v in inputs.items()}
        origin = "sentences"
    else:
        inputs, run, shapes = _generated_reference(config, loaded, say)
        origin = "generated"
    notes = [*run.fallbacks, *([run.cross_check] if run.cross_check else [])]
    say(f"reference: {run.runtime} on the source model" + (f" ({'; '.join(notes)})" if notes else ""))
    return Project(config, loaded, inputs, run.outputs, origin, shapes, run.runtime, run.fallbacks, run.cross_check,
                   validation[1:], overlap, preprocessing)  # fmt: skip


def io_dtypes(signature: ModelSignature) -> set[str]:
    return {t.dtype for t in [*signature.inputs, *signature.outputs]}


def _sentence_feeds(config: GpuxConfig, loaded: LoadedModel, record: TextPreprocessing) -> list[dict[str, Any]]:
    """REFERENCE_TEXTS through the bundle's own tokenisation; the model's other inputs generated.
    Sentences the settings refuse (over max_length without truncation) are left out."""
    encoder = text_encoder(record, tokenizer_path(config))
    base = resolve_shapes(loaded.signature, config)
    feeds: list[dict[str, Any]] = []
    for text in REFERENCE_TEXTS:
        try:
            tokens = encoder.encode(text)
        except ValueError:  # PreprocessError: too long for a bundle that does not truncate
            continue
        shapes = {**base, **{k: list(v.shape) for k, v in tokens.items()}}
        feeds.append({**make_inputs(loaded.signature, config, loaded.proto, shapes), **tokens})
    return feeds[: EXTRA_SAMPLES + 1]


def _generated_reference(config: GpuxConfig, loaded: LoadedModel, say: Progress) -> tuple[Any, ReferenceRun, Any]:
    """Generated inputs and their outputs; unknown dims fall back through FALLBACK_SIZES."""
    sig = loaded.signature
    first_error: ReferenceError_ | None = None
    tried: list[dict[str, list[int]]] = []
    for defaults in [(DEFAULT_DIM, DEFAULT_SPATIAL), *FALLBACK_SIZES]:
        shapes = resolve_shapes(sig, config, defaults)
        if shapes in tried:
            continue  # no dim depends on the defaults: another try would fail the same way
        tried.append(shapes)
        inputs = make_inputs(sig, config, loaded.proto, shapes)
        try:
            return inputs, run_reference(loaded.path, inputs, io_dtypes(sig)), shapes
        except ReferenceError_ as exc:
            first_error = first_error or exc
            say(f"reference: source model failed at {shapes}; trying other sizes for unknown dims")
    assert first_error is not None
    raise first_error
