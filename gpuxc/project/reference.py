"""Reference inputs and outputs: what every bundle is verified against.

Inputs come from the calibration data when ``build.calibration`` is set (the first sample after
those the quantizers calibrate on: :func:`gpuxc.project.calibration.load_validation_samples`),
otherwise they are generated deterministically from the signature (fixed seed) with values
realistic for their dtype and role: token ids stay below the vocabulary size of the embedding
they index, masks are ones. Outputs are the *source* model's, before any pass ran, computed by
ONNX Runtime when it can run it (gpuxc/project/reference_runtime.py says what else).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from gpuxc.errors import ReferenceError_, first_line
from gpuxc.project.config_preprocessing import MASK_RE, TYPE_IDS_RE

if TYPE_CHECKING:
    from onnx import ModelProto

    from gpuxc.project.config import GpuxConfig
    from gpuxc.project.model import ModelSignature, TensorInfo

# Symbolic dims with no value from gpux.yml: an image-like rank-4 float input gets 224x224
# spatial dims (what most CNNs are trained on); any other unknown dim gets 16.
DEFAULT_SPATIAL = 224
DEFAULT_DIM = 16
# When the source model fails at those sizes (a sequence too short for a convolution, a
# height the architecture cannot take), these (other dim, spatial dim) pairs are tried in
# order; user-given values are never changed. The sizes used are recorded in the manifest.
FALLBACK_SIZES = [(64, 64), (128, 48), (512, 320), (32, 32)]
# Generated inputs are bounded before anything is allocated: a model declaring a dim of 2**40
# gets a clear error, not a MemoryError or the OOM killer. Bytes over all inputs together.
MAX_INPUT_BYTES = 4 << 30
MAX_INPUT_RANK = 64  # NumPy's limit


def resolve_shapes(signature: ModelSignature, config: GpuxConfig,
                   defaults: tuple[int, int] = (DEFAULT_DIM, DEFAULT_SPATIAL)) -> dict[str, list[int]]:  # fmt: skip
    """A concrete shape for every input: gpux.yml first, then the batch size, then defaults.

    Symbolic dims that share a name across inputs (``batch``, ``seq``) get one value.
    """
    declared = config.declared_inputs()
    symbols = _given_symbols(signature, config, declared)
    shapes: dict[str, list[int]] = {}
    for tensor in signature.inputs:
        spec = declared.get(tensor.name)
        explicit = config.build.shapes.get(tensor.name)
        # A model input of unknown rank takes its rank from build.shapes, then from gpux.yml.
        model_shape = (
            tensor.shape
            if tensor.shape is not None
            else (explicit if explicit is not None else (spec.shape if spec and spec.shape else []))
        )
        out: list[int] = []
        for i, dim in enumerate(model_shape):
            value = _dim_value(i, dim, tensor, model_shape, explicit, spec, config, symbols, defaults)
            out.append(value)
        shapes[tensor.name] = out
    return shapes


def _given_symbols(signature: ModelSignature, config: GpuxConfig, declared: dict[str, Any]) -> dict[str, int]:
    """Symbolic dims that gpux.yml gives a value on *any* input: every input sharing the name
    gets it, whichever input comes first (build.shapes before declared shapes)."""
    symbols: dict[str, int] = {}
    for source in ("build", "declared"):
        for tensor in signature.inputs:
            spec = declared.get(tensor.name)
            given = config.build.shapes.get(tensor.name) if source == "build" else (spec.shape if spec else None)
            for i, dim in enumerate(tensor.shape or []):
                if isinstance(dim, str) and given is not None and i < len(given):
                    value = given[i]
                    # build.shapes may say 0; a declared -1 means "any", not a value.
                    if isinstance(value, int) and value >= (0 if source == "build" else 1):
                        symbols.setdefault(dim, value)
    return symbols


def _dim_value(i: int, dim: Any, tensor: TensorInfo, shape: list[Any], explicit: list[int] | None,
               spec: Any, config: GpuxConfig, symbols: dict[str, int], defaults: tuple[int, int]) -> int:  # fmt: skip
    if isinstance(dim, int) and dim >= 0:
        return dim
    if explicit is not None and i < len(explicit):
        value = explicit[i]
    elif (
        spec is not None and spec.shape and i < len(spec.shape) and isinstance(spec.shape[i], int) and spec.shape[i] > 0
    ):
        value = spec.shape[i]
    elif isinstance(dim, str) and dim in symbols:
        return symbols[dim]
    elif i == 0 and len(shape) > 1:
        value = config.runtime.batch_size
    elif i == 1 and len(shape) == 2 and config.preprocessing.max_length and tensor.dtype in ("int64", "int32"):
        # Token inputs of a text block: a static-shape target is specialised to max_length tokens.
        value = config.preprocessing.max_length
    elif i in (1, 2) and _is_pixel_input(tensor, config):
        # Image preprocessing's uint8 input: a picture of the size the graph resizes to (what a
        # static-shape target is then specialised to); calibration photos bring their own sizes.
        resize = config.preprocessing.resize
        value = (resize[1] if i == 1 else resize[0]) if resize else defaults[1]
    elif spec is not None and spec.max_length and i == len(shape) - 1:
        value = spec.max_length
    elif len(shape) == 4 and tensor.dtype.startswith("float") and i >= 2:
        value = defaults[1]
    else:
        value = defaults[0]
    if isinstance(dim, str):
        symbols.setdefault(dim, value)
    return value


def _is_pixel_input(tensor: TensorInfo, config: GpuxConfig) -> bool:
    pre = config.preprocessing
    return pre.kind == "image" and tensor.name == pre.image_input and tensor.dtype == "uint8"


def make_inputs(signature: ModelSignature, config: GpuxConfig, model: ModelProto,
                shapes: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Deterministic inputs for ``signature`` (seed ``build.seed``)."""
    return generate(signature, shapes or resolve_shapes(signature, config), config.build.seed, index_bounds(model))


def generate(signature: ModelSignature, shapes: dict[str, list[int]], seed: int,
             bounds: dict[str, int] | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Inputs of the given shapes from ``seed``; ``bounds`` caps integer index inputs."""
    check_input_sizes(signature, shapes)
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for tensor in signature.inputs:
        try:
            values = _values(tensor, shapes[tensor.name], rng, (bounds or {}).get(tensor.name))
        except (TypeError, ValueError) as exc:  # a dtype NumPy cannot make (complex, int4, ...)
            raise ReferenceError_(
                f"cannot generate reference input '{tensor.name}' of type {tensor.dtype}: {first_line(exc)}",
                hint="give inputs through build.calibration.data",
            ) from None
        # np.asarray: scalar (rank-0) draws come back as NumPy scalars, which ORT refuses.
        inputs[tensor.name] = np.asarray(values)
    return inputs


def check_input_sizes(signature: ModelSignature, shapes: dict[str, list[int]]) -> None:
    """Refuse shapes whose inputs would take more than MAX_INPUT_BYTES (or a rank NumPy cannot hold)."""
    total = 0
    for tensor in signature.inputs:
        shape = shapes[tensor.name]
        if len(shape) > MAX_INPUT_RANK:
            raise ReferenceError_(f"input '{tensor.name}' has rank {len(shape):,}; the limit is {MAX_INPUT_RANK}")
        try:  # bfloat16 inputs are made as float32; strings as object pointers
            itemsize = {"string": 8, "bfloat16": 4}.get(tensor.dtype) or np.dtype(tensor.dtype).itemsize
        except TypeError:
            itemsize = 8
        nbytes = math.prod(shape) * itemsize
        total += nbytes
        if total > MAX_INPUT_BYTES:
            fixed = tensor.shape is not None and all(isinstance(d, int) for d in tensor.shape)
            raise ReferenceError_(
                f"reference input '{tensor.name}' {shape} ({tensor.dtype}) would take {nbytes:,} bytes; generated "
                f"reference inputs are limited to {MAX_INPUT_BYTES >> 30} GiB in all",
                hint="the model declares these dims: it is malformed or too large to verify"
                if fixed
                else "give smaller sizes with build.shapes or inputs.<name>.shape in gpux.yml",
            )


def _values(tensor: TensorInfo, shape: list[int], rng: np.random.Generator, bound: int | None) -> np.ndarray:
    dtype = tensor.dtype
    if dtype == "string":
        words = np.array(["alpha", "beta", "gamma", "delta"], dtype=object)
        return rng.choice(words, size=shape).astype(object)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype.startswith(("float", "bfloat")):
        np_dtype = np.float32 if dtype == "bfloat16" else np.dtype(dtype)
        # Drawn as float32 (not NumPy's float64 default): the peak stays what check_input_sizes allowed.
        return rng.standard_normal(shape, dtype=np.float32).astype(np_dtype, copy=False)
    np_dtype = np.dtype(dtype)
    if dtype == "uint8" and len(shape) == 4 and shape[-1] in (1, 3, 4) and bound is None:
        # Pixels (image preprocessing's input, channels last): the whole 0..255 range, not ids.
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    if MASK_RE.search(tensor.name):
        return np.ones(shape, dtype=np_dtype)
    if TYPE_IDS_RE.search(tensor.name):
        return np.zeros(shape, dtype=np_dtype)
    high = bound if bound is not None else 4
    info = np.iinfo(np_dtype)
    high = int(min(high, info.max))
    low = 0 if info.min >= 0 or bound is not None else 0
    return rng.integers(low, max(high, low + 1), size=shape, dtype=np_dtype)


def index_bounds(model: ModelProto) -> dict[str, int]:
    """Inputs used as ``Gather`` indices into an initializer: the size of the gathered axis.

    Keeps generated token ids inside an embedding table's vocabulary.
    """
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    passthrough = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity"}
    # Follow each input through shape-only ops to the Gather that consumes it.
    alias: dict[str, str] = {v.name: v.name for v in model.graph.input}
    bounds: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in passthrough and node.input and node.input[0] in alias:
            for out in node.output:
                alias[out] = alias[node.input[0]]
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in alias and node.input[0] in inits:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            dims = inits[node.input[0]]
            if dims:
                size = dims[axis if axis >= 0 else axis + len(dims)]
                source = alias[node.input[1]]
                bounds[source] = min(bounds.get(source, size), size)
    return bounds
