"""Calibration samples: representative inputs read from files, or generated ones.

``build.calibration.data`` names one of these layouts (``load_samples`` reads them all):

- a folder of ``.npz`` files, one sample each, arrays named like the model inputs;
- a folder of ``.npy`` files, one array each: only for a model with a single input;
- one ``.npz`` whose arrays carry a leading sample axis (``N`` samples), or exactly the
  input's rank (one sample);
- with a ``preprocessing`` block, raw data through the bundle's own preprocessing
  (gpuxc/project/calibration_raw.py): a folder of images, or a ``.txt`` file with one text per line.

Files are read in sorted name order, at most ``samples`` of them, always with
``allow_pickle=False``. Every sample is checked against the model's signature (names,
dtype kind, rank, fixed dims, symbolic dims shared between inputs) and every problem is a
``ConfigError`` of one line naming the file, the input, what the model wants and what the
file holds. Values are cast to the model's dtype only within a kind: any float width to
the model's float (NumPy writes float64 by default), integers to the model's integer type
when every value fits; never across kinds (int to float, float to int, bool to int).

``random_samples`` generates inputs with the generator of the reference inputs
(:func:`gpuxc.project.reference.generate`), from seeds derived from ``seed`` but never equal to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpuxc.errors import ConfigError, first_line
from gpuxc.project import calibration_raw
from gpuxc.project.config import GpuxConfig
from gpuxc.project.preprocessing import ImagePreprocessing, Preprocessing, TextPreprocessing, tokenizer_path
from gpuxc.project.reference import DEFAULT_DIM, DEFAULT_SPATIAL, generate, index_bounds, resolve_shapes

if TYPE_CHECKING:
    from onnx import ModelProto

    from gpuxc.project.model import ModelSignature, TensorInfo

__all__ = ["load_samples", "load_validation_samples", "random_samples", "resolve_model_shapes"]

Sample = dict[str, np.ndarray]
# Separates the calibration seeds from the reference seed (any constant would do).
_CALIBRATION_STREAM = 0xCA11B
_KINDS = {
    "f": "floats",
    "i": "integers",
    "u": "integers",
    "b": "bools",
    "U": "strings",
    "S": "bytes",
    "c": "complex numbers",
}


def load_samples(data: Path, signature: ModelSignature, samples: int, *, where: str | None = None,
                 preprocessing: Preprocessing | None = None,
                 tokenizer: Path | None = None) -> list[Sample]:  # fmt: skip
    """At most ``samples`` checked samples from ``data`` (see the module doc for the layouts).

    ``where`` (``file:line:col`` of the setting) prefixes every error message. With image
    ``preprocessing``, ``data`` may be a folder of images; with text ``preprocessing`` (and the
    project's ``tokenizer`` file: :func:`gpuxc.project.preprocessing.tokenizer_path`), a .txt
    file with one text per line (gpuxc/project/calibration_raw.py). ``signature`` is the model the
    samples feed: with image preprocessing, the one with the uint8 image input.
    """
    prefix = f"{where}: " if where else ""
    data = Path(data)
    if samples < 1:
        raise ConfigError(f"{prefix}calibration needs at least one sample, asked for {samples}")
    try:
        is_dir, is_file = data.is_dir(), data.is_file()
    except OSError as exc:  # a name too long for the file system, a permission denied on the way
        raise ConfigError(f"{prefix}calibration data '{data.name[:80]}' cannot be opened ({exc.strerror})") from None
    kind = preprocessing.kind if preprocessing is not None else None
    if is_dir:
        if calibration_raw.has_images(data):
            if kind != "image":
                raise ConfigError(f"{prefix}calibration folder '{data.name}' holds images: calibrating on images "
                                  "needs an image preprocessing block (preprocessing.resize or normalize); "
                                  "without one, give .npz/.npy samples")  # fmt: skip
            assert isinstance(preprocessing, ImagePreprocessing)
            _no_tensors_beside_images(data, prefix)
            return calibration_raw.load_images(data, preprocessing, signature, samples, prefix)
        if kind is not None and not any(p.suffix in (".npz", ".npy") for p in data.iterdir() if p.is_file()):
            raw = ("no images (.jpg, .png, ...) and no .npz/.npy files" if kind == "image" else
                   "no .npz/.npy files: for text, name a .txt file (one text per line) in build.calibration.data")
            raise ConfigError(f"{prefix}calibration folder '{data.name}' holds {raw}")  # fmt: skip
        return _load_folder(data, signature, samples, prefix)
    if is_file and data.suffix == ".npz":
        return _load_npz(data, signature, samples, prefix)
    if is_file and data.suffix.lower() in calibration_raw.TEXT_SUFFIXES:
        if kind != "text":
            raise ConfigError(f"{prefix}calibration data '{data.name}' is text: calibrating on text needs a "
                              "text preprocessing block (preprocessing.tokenizer); without one, give .npz "
                              "samples")  # fmt: skip
        assert isinstance(preprocessing, TextPreprocessing)
        if tokenizer is None:
            raise ConfigError(f"{prefix}calibration text '{data.name}' needs the project's tokenizer file")
        return calibration_raw.load_texts(data, preprocessing, tokenizer, signature, samples, prefix)
    if not data.exists():
        raise ConfigError(f"{prefix}calibration data '{data.name}' does not exist")
    raise ConfigError(f"{prefix}calibration data '{data.name}' is not {_LAYOUTS[kind]}")


def random_samples(signature: ModelSignature, shapes: dict[str, list[int]], n: int, seed: int,
                   model: ModelProto) -> list[Sample]:  # fmt: skip
    """``n`` generated samples of the given concrete ``shapes``, drawn like the reference inputs
    (:func:`gpuxc.project.reference.generate`: realistic values per dtype, token ids inside the vocabulary).

    Each sample has its own seed derived from ``seed``, never ``seed`` itself: the reference
    inputs (drawn from ``build.seed``) are not among them, so verification does not run on the
    data a quantizer was calibrated on.
    """
    bounds = index_bounds(model)
    seeds = np.random.SeedSequence([seed, _CALIBRATION_STREAM]).generate_state(n)
    return [generate(signature, shapes, int(s), bounds) for s in seeds]


def resolve_model_shapes(signature: ModelSignature, given: dict[str, list[int]] | None = None,
                         defaults: tuple[int, int] | None = None) -> dict[str, list[int]]:  # fmt: skip
    """Concrete input shapes without a gpux.yml: ``given`` shapes first, then the model's fixed
    dims, then the rules of :func:`gpuxc.project.reference.resolve_shapes` (batch 1, ``defaults``)."""
    config = GpuxConfig.model_validate(
        {"name": "shapes", "model": {"source": "model.onnx"}, "build": {"shapes": dict(given or {})}}
    )
    return resolve_shapes(signature, config, defaults or (DEFAULT_DIM, DEFAULT_SPATIAL))


def load_validation_samples(config: GpuxConfig, signature: ModelSignature, count: int, *,
                            preprocessing: Preprocessing | None = None) -> tuple[list[Sample], bool]:  # fmt: skip
    """Up to ``count`` samples of ``build.calibration.data`` to verify on, and whether they overlap
    the calibration: the quantizers calibrate on the first ``build.calibration.samples``, so these
    are the ones after them (accuracy judged on inputs the quantizer never saw); when the data holds
    no more, the first ``count`` and ``True``. Checked against the signature; errors point at
    ``build.calibration.data`` in gpux.yml. ``preprocessing`` (the settled record) lets the data be
    images or text, as for :func:`load_samples`; the tokenizer is the project's."""
    cal = config.build.calibration
    assert cal is not None and cal.data is not None
    where = config.where("build", "calibration", "data")
    path = (config.project_dir / cal.data).resolve()
    tokenizer = tokenizer_path(config) if isinstance(preprocessing, TextPreprocessing) else None
    loaded = load_samples(path, signature, cal.samples + count, where=where, preprocessing=preprocessing,
                          tokenizer=tokenizer)  # fmt: skip
    unseen = loaded[cal.samples:]
    if unseen:
        return unseen[:count], False
    return loaded[:count], True


# -- reading ----------------------------------------------------------------------------------

_LAYOUTS = {
    None: "an .npz file or a folder of .npz/.npy files",
    "image": "an .npz file or a folder of images or of .npz/.npy files",
    "text": "an .npz file, a .txt file (one text per line) or a folder of .npz/.npy files",
}


def _no_tensors_beside_images(folder: Path, prefix: str) -> None:
    tensors = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in (".npz", ".npy"))
    if tensors:
        raise ConfigError(f"{prefix}calibration folder '{folder.name}' mixes images and .npz/.npy files "
                          f"('{tensors[0]}'); use one kind")  # fmt: skip



def _load_folder(folder: Path, signature: ModelSignature, samples: int, prefix: str) -> list[Sample]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".npz", ".npy"))
    npz = [p for p in files if p.suffix == ".npz"]
    npy = [p for p in files if p.suffix == ".npy"]
    if not files:
        raise ConfigError(f"{prefix}calibration folder '{folder.name}' holds no .npz files and no .npy files")
    if npz and npy:
        raise ConfigError(
            f"{prefix}calibration folder '{folder.name}' mixes .npz and .npy files; use one kind "
            "(.npz: arrays named like the inputs; .npy: single-input models)"
        )
    out: list[Sample] = []
    if npz:
        for path in npz[:samples]:
            label = f"{folder.name}/{path.name}"
            arrays = _read(path, label, prefix)
            out.append(_check_sample(arrays, signature, label, prefix, sample_axis=False))
        return out
    if len(signature.inputs) != 1:
        names = ", ".join(t.name for t in signature.inputs)
        raise ConfigError(
            f"{prefix}calibration folder '{folder.name}' holds .npy files, which only work for a model with one "
            f"input; this model has {len(signature.inputs)} ({names}): use .npz files with arrays named like the inputs"
        )
    name = signature.inputs[0].name
    for path in npy[:samples]:
        label = f"{folder.name}/{path.name}"
        out.append(_check_sample({name: _read(path, label, prefix)}, signature, label, prefix, sample_axis=False))
    return out


def _load_npz(path: Path, signature: ModelSignature, samples: int, prefix: str) -> list[Sample]:
    label = path.name
    arrays = _read(path, label, prefix)
    _check_names(arrays, signature, label, prefix)
    # A leading sample axis when every input of known rank has one more dim than the model's.
    extra = {t.name: arrays[t.name].ndim - len(t.shape) for t in signature.inputs if t.shape is not None}
    if extra and all(v == 1 for v in extra.values()):
        counts = {name: arrays[name].shape[0] for name in arrays}
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"'{k}' {v}" for k, v in counts.items())
            raise ConfigError(f"{prefix}'{label}': the arrays hold different numbers of samples ({listed})")
        total = next(iter(counts.values()))
        if total == 0:
            raise ConfigError(f"{prefix}'{label}' holds 0 samples")
        return [
            _check_sample({k: v[i] for k, v in arrays.items()}, signature, f"{label}[{i}]", prefix, sample_axis=True)
            for i in range(min(total, samples))
        ]
    return [_check_sample(arrays, signature, label, prefix, sample_axis=True)]


def _read(path: Path, label: str, prefix: str) -> Any:
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:
        raise ConfigError(f"{prefix}cannot read '{label}': {first_line(exc)}") from None


# -- checking ---------------------------------------------------------------------------------


def _check_names(arrays: dict[str, np.ndarray], signature: ModelSignature, label: str, prefix: str) -> None:
    wanted = [t.name for t in signature.inputs]
    for name in wanted:
        if name not in arrays:
            has = ", ".join(arrays) or "nothing"
            raise ConfigError(f"{prefix}'{label}' has no array named '{name}' (has: {has}; the model wants: "
                              f"{', '.join(wanted)})")  # fmt: skip
    for name in arrays:
        if name not in wanted:
            raise ConfigError(
                f"{prefix}'{label}' has an array '{name}' that is not a model input (inputs: {', '.join(wanted)})"
            )


def _check_sample(arrays: dict[str, np.ndarray], signature: ModelSignature, label: str, prefix: str,
                  sample_axis: bool) -> Sample:  # fmt: skip
    _check_names(arrays, signature, label, prefix)
    sample: Sample = {}
    symbols: dict[str, tuple[int, str]] = {}
    for tensor in signature.inputs:
        value = np.asarray(arrays[tensor.name])
        where = f"{prefix}'{label}': '{tensor.name}'"
        if tensor.shape is not None:
            if value.ndim != len(tensor.shape):
                also = f" (or {len(tensor.shape) + 1} with a leading sample axis)" if sample_axis else ""
                raise ConfigError(
                    f"{where} has rank {value.ndim} (shape {list(value.shape)}), the model wants rank "
                    f"{len(tensor.shape)}{also}: {_shape_text(tensor.shape)}"
                )
            for i, (dim, size) in enumerate(zip(tensor.shape, value.shape, strict=True)):
                if isinstance(dim, int) and dim != size:
                    raise ConfigError(
                        f"{where} has shape {list(value.shape)}, the model fixes dim {i} to {dim}: "
                        f"{_shape_text(tensor.shape)}"
                    )
                if isinstance(dim, str):
                    seen = symbols.setdefault(dim, (size, tensor.name))
                    if seen[0] != size:
                        raise ConfigError(
                            f"{prefix}'{label}': dim '{dim}' is {seen[0]} in '{seen[1]}' but {size} in '{tensor.name}'"
                        )
        sample[tensor.name] = _cast(value, tensor, where)
    return sample


def _cast(value: np.ndarray, tensor: TensorInfo, where: str) -> np.ndarray:
    want = tensor.dtype
    got = value.dtype
    if want == "string":
        if got.kind not in "US":
            raise ConfigError(f"{where} is {got}, the model wants string")
        return value.astype(object)
    target = np.dtype(np.float32 if want == "bfloat16" else want)
    if got == target:
        return value
    refused = f"{where} is {got}, the model wants {want}"
    kind = _KINDS.get(got.kind, got.kind)
    if target.kind == "f":
        if got.kind != "f":
            raise ConfigError(f"{refused} (calibration data is cast between float widths only, never from {kind})")
        with np.errstate(over="ignore"):  # overflow is what the next line looks for
            cast = value.astype(target)
        if np.any(np.isfinite(value) & ~np.isfinite(cast)):
            raise ConfigError(f"{refused}, and some values overflow {want}")
        return cast
    if target.kind in "iu":
        if got.kind not in "iu":
            raise ConfigError(f"{refused} (integers are cast only from other integers, never from {kind})")
        info = np.iinfo(target)
        if value.size and (value.min() < info.min or value.max() > info.max):
            raise ConfigError(f"{refused}, and holds values {value.min()}..{value.max()} outside {want}")
        return value.astype(target)
    raise ConfigError(refused)


def _shape_text(shape: list[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
