"""gpux.yml: GPUX's project schema plus gpuxc's ``build`` section.

Every field is either acted on by some stage (see docs/gpux-yml.md, which says
which) or rejected with a "not supported yet" message: nothing is silently
ignored. Unknown keys are errors with a did-you-mean, and every error names
``file:line:column``.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gpuxc.errors import ConfigError
from gpuxc.project.yamlsource import SourceMap, load_yaml

CONFIG_NAMES = ("gpux.yml", "gpux.yaml")

# Tensor element types a gpux.yml may declare (ONNX's, spelled as NumPy spells them).
DTYPES = (
    "float32", "float16", "bfloat16", "float64",
    "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64",
    "bool", "string",
)  # fmt: skip
DTYPE_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64"}

BACKENDS = ("auto", "tensorrt", "cuda", "rocm", "coreml", "directml", "openvino", "cpu")
PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static", "auto")
OPT_LEVELS = ("none", "basic", "extended", "all")

# Names end up in folder names and in HTTP routes: keep them boring.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,49}$")
# A target name as plugins must spell it (gpuxc.plugin.manager.NAME_RE): it is also a folder name.
TARGET_RE = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
# serving.host: an IP address or a DNS name (labels of letters, digits, '-', '_'), nothing else.
_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOST_RE = re.compile(rf"^{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?$")
MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip

Dim = Annotated[int, Field(ge=-1)] | str | None


def not_supported(what: str, why: str) -> str:
    return f"{what} is not supported yet: {why}"


class _Section(BaseModel):
    # strict: "8080" is not a port, "yes" is not a bool; extra: unknown keys are errors.
    model_config = ConfigDict(extra="forbid", strict=True)


class TensorSpec(_Section):
    """One declared input or output (GPUX ``inputs:``/``outputs:`` entry)."""

    name: str
    type: str | None = None
    shape: list[Dim] | None = None
    required: bool = True
    description: str | None = None
    labels: list[str] | None = None
    max_length: Annotated[int, Field(gt=0)] | None = None

    @field_validator("type")
    @classmethod
    def _dtype(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = DTYPE_ALIASES.get(value, value)
        if value not in DTYPES:
            raise ValueError(
                f"unknown type '{_clip(value)}'{_did_you_mean(value, DTYPES)}; one of: {', '.join(DTYPES)}"
            )
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
        if value is not None and MEMORY_RE.match(value) is None:
            raise ValueError(f"'{_clip(value)}' is not a memory size like 2GB, 512MB or 1073741824")
        return value

    @property
    def memory_bytes(self) -> int | None:
        if self.memory is None:
            return None
        match = MEMORY_RE.match(self.memory)
        assert match is not None  # checked by the validator
        return int(float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()])


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
            raise ValueError(f"'{_clip(value)}' is not an IP address or host name")
        return value

    @property
    def batch_limit(self) -> int:
        return self.max_batch_size or self.batch_size


class PreprocessingSection(_Section):
    """GPUX's preprocessing block. gpuxc bundles take tensors, so every field is refused for now."""

    tokenizer: str | None = None
    max_length: int | None = None
    resize: list[int] | None = None
    normalize: Any = None

    # A field validator (not a model validator) so that the error points at the refused key.
    @field_validator("tokenizer", "max_length", "resize", "normalize")
    @classmethod
    def _refuse(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            raise ValueError(
                not_supported(
                    f"preprocessing.{info.field_name}",
                    "bundles take tensors; tokenize/resize before calling the runner (use inputs.<name>.max_length "
                    "to bound a sequence)",
                )
            )
        return value


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


class BuildSection(_Section):
    targets: list[str] = Field(default_factory=lambda: ["cpu"])
    optimization_level: Literal[OPT_LEVELS] | None = None  # type: ignore[valid-type]
    precision: Literal[PRECISIONS] = "fp32"  # type: ignore[valid-type]
    optimize: Literal["fixed", "auto"] = "fixed"  # auto: build candidate variants, keep the fastest in tolerance
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
                f"'{_clip(value)}' is not a valid name: use letters, digits, '.', '_' or '-' (starting with a "
                "letter or digit, at most 100 characters)"
            )
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not VERSION_RE.match(value):
            raise ValueError(f"'{_clip(value)}' is not a valid version: use letters, digits, '.', '+', '_' or '-'")
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
                    raise ValueError(f"{section} declares '{_clip(spec.name)}' twice")
                seen.add(spec.name)
        return self

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


def find_config(project: Path, config: Path | None = None) -> Path:
    """The gpux.yml to use for ``project`` (a folder or a file), or ``config`` when given."""
    if config is not None:
        return config if config.is_absolute() else (Path.cwd() / config)
    if project.is_file():
        return project
    if not project.exists():
        raise ConfigError(f"{project}: no such file or directory")
    for name in CONFIG_NAMES:
        candidate = project / name
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{project}: no gpux.yml here (run 'gpuxc init MODEL.onnx' to write one)")


def load_config(path: Path) -> GpuxConfig:
    """Read and validate a gpux.yml; every error is a ``ConfigError`` naming file:line:column."""
    display = _display(path)
    data, smap = load_yaml(path, display)
    return parse_config(data, smap, path)


def parse_config(data: Any, smap: SourceMap, path: Path) -> GpuxConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{smap.where(())}: expected a mapping at the top level, got {_kind(data)}")
    data = _normalise_tensor_lists(data, smap)
    _check_unique_tensor_names(data, smap)
    try:
        cfg = GpuxConfig.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, smap) from None
    cfg._source = smap
    cfg._path = path.resolve()
    return cfg


# -- helpers ---------------------------------------------------------------------------------


def _normalise_tensor_lists(data: dict[str, Any], smap: SourceMap) -> dict[str, Any]:
    """GPUX accepts ``inputs`` as ``{name: spec}`` or ``[{name: ..., ...}]``: make both a list.

    Positions move with the values so that errors still point into the file.
    """
    data = dict(data)
    for section in ("inputs", "outputs"):
        value = data.get(section)
        if isinstance(value, dict):
            items = []
            for index, (name, spec) in enumerate(value.items()):
                old = (section, name)
                new = (section, index)
                key_pos = smap.keys.get(old)
                smap.rename(old, new)
                if spec is None:
                    spec = {}
                if isinstance(spec, dict):
                    if "name" in spec:
                        raise ConfigError(
                            f"{smap.where(new + ('name',), key=True)}: '{section}.{_clip(str(name))}' is a mapping key "
                            "already naming the tensor; drop 'name' or use the list form"
                        )
                    spec = {"name": name, **spec}
                    if key_pos is not None:
                        smap.values[new + ("name",)] = key_pos
                        smap.keys[new + ("name",)] = key_pos
                items.append(spec)
            data[section] = items
        elif value is None and section in data:
            data[section] = []
    return data


def _check_unique_tensor_names(data: dict[str, Any], smap: SourceMap) -> None:
    """A tensor named twice, reported at its second ``name`` (the model validator cannot say where)."""
    for section in ("inputs", "outputs"):
        items = data.get(section)
        if not isinstance(items, list):
            continue
        seen: set[str] = set()
        for index, item in enumerate(items):
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str):
                continue
            if name in seen:
                raise ConfigError(f"{smap.where((section, index, 'name'))}: {section} declares '{_clip(name)}' twice")
            seen.add(name)


def _config_error(exc: ValidationError, smap: SourceMap) -> ConfigError:
    errors = exc.errors(include_url=False)
    # A misspelt key also makes the real key "missing": report the spelling, it is the cause.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = _error_loc(first, smap)
    kind = first["type"]
    dotted = _dotted(loc)
    if kind == "extra_forbidden":
        key = str(loc[-1])
        where = smap.where(loc, key=True)
        parent = _dotted(loc[:-1]) or "the top level"
        hint = _did_you_mean(key, _fields_at(loc[:-1]))
        message = f"unknown key '{_clip(key)}' in {parent}{hint}"
    elif kind == "missing":
        where = smap.where(loc[:-1])
        message = f"missing required key '{dotted}'"
    else:
        where = smap.where(loc)
        message = f"{dotted}: {_describe(first)}" if dotted else _describe(first)
    # One value failing every member of a union (int | str) is one problem, not several.
    others = len({_error_loc(e, smap) for e in errors}) - 1
    more = f" (and {others} more problem{'s' if others > 1 else ''})" if others > 0 else ""
    return ConfigError(f"{where}: {message}{more}")


def _error_loc(error: Any, smap: SourceMap) -> tuple[Any, ...]:
    """The error's path in the document: pydantic appends union member tags ('constrained-int',
    'str') to a value's path; those name no place in the file, so they are dropped."""
    loc = tuple(error["loc"])
    if error["type"] in ("missing", "extra_forbidden"):
        return loc
    while len(loc) > 1 and loc not in smap.values and isinstance(loc[-1], str) and loc[:-1] in smap.values:
        loc = loc[:-1]
    return loc


def _describe(error: dict[str, Any]) -> str:
    kind = error["type"]
    msg = str(error["msg"])
    if kind in ("value_error", "assertion_error"):
        msg = msg.split(", ", 1)[1] if msg.startswith(("Value error, ", "Assertion failed, ")) else msg
    if kind.endswith("_type") or kind in ("literal_error", "enum"):
        value = error.get("input")
        got = (
            f", got {_kind(value)} {_clip(repr(value))}"
            if not isinstance(value, (dict, list))
            else f", got {_kind(value)}"
        )
        return f"{msg[0].lower()}{msg[1:]}{got}"
    return msg


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the schema object at ``loc`` (for did-you-mean hints)."""
    current: Any = GpuxConfig
    for part in loc:
        current = _unwrap(current, part)
        if current is None:
            return []
    current = _unwrap(current, None)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(tp: Any, part: Any) -> Any:
    """Step from a type annotation into the type at ``part`` (a field name or a list index)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _unwrap(typing.get_args(tp)[0], part)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            found = _unwrap(arg, part)
            if found is not None:
                return found
        return None
    if part is None:
        return tp
    if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
        field = tp.model_fields.get(part)
        return field.annotation if field else None
    if origin is list and isinstance(part, int):
        return typing.get_args(tp)[0]
    if origin is dict:
        return typing.get_args(tp)[1]
    return None


def _did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` or an empty string: shared by every "unknown name" message."""
    return _did_you_mean(word, choices)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)  # fmt: skip


def _clip(text: str, limit: int = 60) -> str:
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
            _check_json_like(v, f"{where}.{_clip(str(k))}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_json_like(v, f"{where}[{i}]", depth + 1)
    elif not isinstance(value, (str, int, float, bool)) and value is not None:
        raise ValueError(f"{where} must be plain data (string, number, boolean, list, mapping), got {_kind(value)}")


def _check_target_name(name: str) -> None:
    if not TARGET_RE.match(name):
        hint = f" (did you mean '{name.lower()}'?)" if TARGET_RE.match(name.lower()) else ""
        raise ValueError(
            f"'{_clip(name)}' is not a target name{hint}: targets are named with lowercase letters, digits, '_' and "
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
            _check_no_nul(v, f"{where}.{_clip(str(k))}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_no_nul(v, f"{where}[{i}]", depth + 1)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
