"""gpux.yml's schema: GPUX's project sections plus gpuxc's ``build`` section, as pydantic models.

Every field is either acted on by some stage (see docs/gpux-yml.md, which says
which) or rejected with a "not supported yet" message: nothing is silently
ignored. Unknown keys are errors with a did-you-mean, and every error names
``file:line:column``: reading the file and wording its errors is
gpuxc/project/config_load.py's job (find_config, load_config, parse_config).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from gpuxc.errors import did_you_mean
from gpuxc.project.config_errors import clip, kind_of
from gpuxc.project.config_preprocessing import PreprocessingSection
from gpuxc.project.yamlsource import SourceMap
from gpuxc.sizes import is_size, parse_size

# Tensor element types a gpux.yml may declare (ONNX's, spelled as NumPy spells them).
DTYPES = (
    "float32", "float16", "bfloat16", "float64",
    "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64",
    "bool", "string",
)  # fmt: skip
DTYPE_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64"}

BACKENDS = ("auto", "tensorrt", "cuda", "rocm", "coreml", "directml", "openvino", "cpu")
PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static", "int4-weights", "auto")
# Variants --optimize auto tries only when asked (build.optimize_include): int4 weights pay on large MatMuls only.
OPT_IN_VARIANTS = ("int4-weights",)
OPT_LEVELS = ("none", "basic", "extended", "all")

# Names end up in folder names and in HTTP routes: keep them boring.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,49}$")
# A target name as plugins must spell it (gpuxc.plugin.manager.NAME_RE): it is also a folder name.
TARGET_RE = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
# serving.host: an IP address or a DNS name (labels of letters, digits, '-', '_'), nothing else.
_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOST_RE = re.compile(rf"^{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?$")

Dim = Annotated[int, Field(ge=-1)] | str | None


def not_supported(what: str, why: str) -> str:
    """The message for a GPUX field gpuxc refuses for now (docs/gpux-yml.md lists them)."""
    return f"{what} is not supported yet: {why}"


class _Section(BaseModel):
    # strict: "8080" is not a port, "yes" is not a bool; extra: unknown keys are errors.
    model_config = ConfigDict(extra="forbid", strict=True)


class TensorSpec(_Section):
    """One input or output as gpux.yml *declares* it (a GPUX ``inputs:``/``outputs:`` entry).

    Not to be confused with :class:`gpuxc.project.model.TensorInfo` (what the model file says
    a tensor is) or ``gpuxc.bundle.manifest.TensorSpecOut`` (what the manifest records); the
    declaration is checked against the model by gpuxc/project/signature.py.
    """

    name: str
    type: str | None = None
    shape: list[Dim] | None = None
    required: bool = True
    description: str | None = None
    labels: list[str] | None = None
    top_k: Annotated[int, Field(ge=1, le=1000)] | None = None  # with labels: how many ranked labels to return
    max_length: Annotated[int, Field(gt=0)] | None = None

    @field_validator("type")
    @classmethod
    def _dtype(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = DTYPE_ALIASES.get(value, value)
        if value not in DTYPES:
            raise ValueError(f"unknown type '{clip(value)}'{did_you_mean(value, DTYPES)}; one of: {', '.join(DTYPES)}")
        return value

    @field_validator("required")
    @classmethod
    def _required(cls, value: bool) -> bool:
        if not value:
            raise ValueError(
                not_supported("required: false", "ONNX graphs have no optional inputs; every input must be fed")
            )
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value or "\x00" in value:
            raise ValueError("tensor names must be non-empty and contain no NUL character")
        return value

    @model_validator(mode="after")
    def _top_k(self) -> TensorSpec:
        if self.top_k is not None and self.labels is None:
            raise ValueError("top_k ranks labels: give the output 'labels' too")
        return self


class ModelSection(_Section):
    source: str
    format: Literal["onnx"] = "onnx"
    version: str | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        return _number_to_str(value)

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value):
            raise ValueError(not_supported("a URL model.source", "download the model and give a local path"))
        if not value.strip() or "\x00" in value:
            raise ValueError("model.source must be a file path")
        return value


class GpuSection(_Section):
    memory: str | None = None
    backend: Literal[BACKENDS] = "auto"  # type: ignore[valid-type]

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("memory")
    @classmethod
    def _memory_format(cls, value: str | None) -> str | None:
        if value is not None and not is_size(value, unit_ends_in_b=True):
            raise ValueError(f"'{clip(value)}' is not a memory size like 2GB, 512MB or 1073741824")
        return value

    @property
    def memory_bytes(self) -> int | None:
        if self.memory is None:
            return None
        return parse_size(self.memory)  # read by the validator already: cannot fail


class RuntimeSection(_Section):
    gpu: GpuSection = Field(default_factory=GpuSection)
    batch_size: Annotated[int, Field(ge=1)] = 1
    timeout: Annotated[float, Field(gt=0)] = 30.0
    enable_profiling: bool = False


class ServingSection(_Section):
    host: str = "127.0.0.1"  # GPUX bound 0.0.0.0; we only listen publicly when asked to
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 1  # GPUX's name for max_batch_size
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] | None = None  # > 1: dynamic batching (default batch_size)
    max_queue_delay: Annotated[float, Field(ge=0, le=10)] = 0.002  # seconds a request waits for others to batch with
    timeout: Annotated[float, Field(gt=0)] = 5.0
    max_workers: Annotated[int, Field(ge=1, le=64)] = 1
    max_concurrency: Annotated[int, Field(ge=1, le=10_000)] = 64  # requests in flight per worker; more: 503
    max_body_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024  # larger request bodies: 413
    # Reference outputs re-checked on the device at start, before the server reports ready: for
    # variants not verified at compile time (default), always, or never (docs/server.md).
    self_check: Literal["always", "unverified", "off"] = "unverified"

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        # The runner binds to it; anything but an address or a name is a mistake (or an attack).
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            pass
        if len(value) > 253 or not HOST_RE.match(value):
            raise ValueError(f"'{clip(value)}' is not an IP address or host name")
        return value

    @property
    def batch_limit(self) -> int:
        return self.max_batch_size or self.batch_size


class CalibrationSection(_Section):
    """Representative inputs for static quantization (and the reference run)."""

    data: str | None = None  # folder of .npz/.npy files (one sample each) or one .npz with N samples
    samples: Annotated[int, Field(ge=1, le=100_000)] = 32
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    random: bool = False  # calibrate on generated inputs: only when asked, and recorded as a warning

    @field_validator("data")
    @classmethod
    def _data(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or "\x00" in value):
            raise ValueError("calibration data must be a path (non-empty, no NUL character)")
        return value

    @model_validator(mode="after")
    def _source(self) -> CalibrationSection:
        if self.data is None and not self.random:
            raise ValueError("calibration needs 'data' (a folder of .npz/.npy files or one .npz) or 'random: true'")
        if self.data is not None and self.random:
            raise ValueError("calibration 'data' and 'random: true' exclude each other")
        return self


class ToleranceSection(_Section):
    """Verification gate. ``None`` means "the default for the build precision"."""

    atol: Annotated[float, Field(ge=0)] | None = None
    rtol: Annotated[float, Field(ge=0)] | None = None
    min_cosine: Annotated[float, Field(ge=-1, le=1)] | None = None
    min_top1: Annotated[float, Field(ge=0, le=1)] | None = None
    max_mismatch_ratio: Annotated[float, Field(ge=0, le=1)] | None = None


def check_fallback_names(names: list[str]) -> list[str]:
    """build.fallback / --fallback on their own: well-formed, no repeats, no web (it serves a page)."""
    for index, name in enumerate(names):
        _check_target_name(name)
        if name in names[:index]:
            raise ValueError(f"lists '{name}' twice")
    if "web" in names:
        raise ValueError("web cannot be a fallback: a web bundle serves a page, not one variant among others")
    return names


class BuildSection(_Section):
    targets: list[str] = Field(default_factory=lambda: ["cpu"])
    fallback: Annotated[list[str], AfterValidator(check_fallback_names)] = Field(default_factory=list)  # in order
    optimization_level: Literal[OPT_LEVELS] | None = None  # type: ignore[valid-type]
    precision: Literal[PRECISIONS] = "fp32"  # type: ignore[valid-type]
    optimize: Literal["fixed", "auto"] = "fixed"  # auto: build candidate variants, keep the fastest in tolerance
    optimize_include: list[Literal[OPT_IN_VARIANTS]] = Field(default_factory=list)  # type: ignore[valid-type]
    calibration: CalibrationSection | None = None
    tolerance: ToleranceSection = Field(default_factory=ToleranceSection)
    shapes: dict[str, list[Annotated[int, Field(ge=0)]]] = Field(default_factory=dict)
    seed: Annotated[int, Field(ge=0)] = 0
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("build.targets must name at least one target")
        if len(set(value)) != len(value):
            raise ValueError("build.targets lists a target twice")
        for name in value:
            _check_target_name(name)
        return value

    @field_validator("shapes")
    @classmethod
    def _shapes(cls, value: dict[str, list[int]]) -> dict[str, list[int]]:
        for name in value:
            if not name or "\x00" in name:
                raise ValueError("tensor names must be non-empty and contain no NUL character")
        return value

    @field_validator("options")
    @classmethod
    def _options(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, options in value.items():
            _check_target_name(name)
            _check_no_nul(options, f"build.options.{name}")
        return value


class GpuxConfig(_Section):
    name: str
    version: str = "1.0.0"
    description: str | None = None
    model: ModelSection
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    runtime: RuntimeSection = Field(default_factory=RuntimeSection)
    serving: ServingSection = Field(default_factory=ServingSection)
    preprocessing: PreprocessingSection = Field(default_factory=PreprocessingSection)
    metadata: dict[str, Any] = Field(default_factory=dict)
    build: BuildSection = Field(default_factory=BuildSection)

    _source: SourceMap | None = PrivateAttr(default=None)
    _path: Path | None = PrivateAttr(default=None)

    @field_validator("version", mode="before")
    @classmethod
    def _version_str(cls, value: Any) -> Any:
        return _number_to_str(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(
                f"'{clip(value)}' is not a valid name: use letters, digits, '.', '_' or '-' (starting with a "
                "letter or digit, at most 100 characters)"
            )
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not VERSION_RE.match(value):
            raise ValueError(f"'{clip(value)}' is not a valid version: use letters, digits, '.', '+', '_' or '-'")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_json_like(value, "metadata")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> GpuxConfig:
        for section in ("inputs", "outputs"):
            seen: set[str] = set()
            for spec in getattr(self, section):
                if spec.name in seen:
                    raise ValueError(f"{section} declares '{clip(spec.name)}' twice")
                seen.add(spec.name)
        return self

    def declared_inputs(self) -> dict[str, TensorSpec]:
        """``inputs:`` by name, as they describe the compiled model's inputs: with image
        preprocessing, a declaration named like the pixel input describes the float tensor it
        replaced (checked against the source model), not the uint8 pixels, so it is left out."""
        declared = {spec.name: spec for spec in self.inputs}
        if self.preprocessing.kind == "image":
            declared.pop(self.preprocessing.image_input, None)
        return declared

    # -- where things are -------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The gpux.yml this config was read from."""
        if self._path is None:
            raise RuntimeError("config was not loaded from a file")
        return self._path

    @property
    def project_dir(self) -> Path:
        return self.path.parent

    @property
    def model_path(self) -> Path:
        return (self.project_dir / self.model.source).resolve()

    def where(self, *path: str | int, key: bool = False) -> str:
        """``file:line:column`` for a config path like ``where("inputs", 0, "name")``."""
        if self._source is None:
            return "gpux.yml"
        return self._source.where(tuple(path), key=key)

    def canonical(self) -> dict[str, Any]:
        """The config as plain JSON data with defaults filled in: what the manifest records."""
        return self.model_dump(mode="json")


# -- validators' helpers ----------------------------------------------------------------------


def _number_to_str(value: Any) -> Any:
    # YAML reads `version: 1.0` as a float; users mean the string.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def _check_json_like(value: Any, where: str, depth: int = 0) -> None:
    if depth > 16:
        raise ValueError(f"{where} nests too deeply")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_json_like(v, f"{where}.{clip(str(k))}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_json_like(v, f"{where}[{i}]", depth + 1)
    elif not isinstance(value, (str, int, float, bool)) and value is not None:
        raise ValueError(f"{where} must be plain data (string, number, boolean, list, mapping), got {kind_of(value)}")


def _check_target_name(name: str) -> None:
    if not TARGET_RE.match(name):
        hint = f" (did you mean '{name.lower()}'?)" if TARGET_RE.match(name.lower()) else ""
        raise ValueError(
            f"'{clip(name)}' is not a target name{hint}: targets are named with lowercase letters, digits, '_' and "
            "'-' ('gpuxc targets' lists them)"
        )


def _check_no_nul(value: Any, where: str, depth: int = 0) -> None:
    """Target options end up as paths and device names in the runner: no NUL character anywhere."""
    if depth > 16:
        return
    if isinstance(value, str) and "\x00" in value:
        raise ValueError(f"{where} contains a NUL character")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_no_nul(k, where, depth + 1)
            _check_no_nul(v, f"{where}.{clip(str(k))}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_no_nul(v, f"{where}[{i}]", depth + 1)
