"""The pass API: typed graph transformations with recorded provenance.

A pass takes an ``onnx.ModelProto`` and returns ``PassResult(model, modified, stats)``.
Its parameters are a pydantic ``Config`` (documented once, validated once). The
``PassManager`` runs passes in the order a target planned, times them, adds
size/node statistics, and records each run in the manifest so that a build can
be replayed. Heavy imports (onnxruntime, quantizers) belong inside ``run``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from onnx import ModelProto
from pydantic import BaseModel, ConfigDict, ValidationError

from gpuxc.errors import GpuxcError, PassError, PluginError, first_line

if TYPE_CHECKING:
    from gpuxc.project.preprocessing import Preprocessing

__all__ = ["PassConfig", "PassResult", "PassContext", "PassSpec", "PassRecord", "PassSkipped", "Pass", "PassManager"]


class PassConfig(BaseModel):
    """Base of every pass's typed parameters."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class PassResult:
    model: ModelProto
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)
    # Extra files the pass produced (e.g. ort-format's model.ort), by file name; the target
    # copies them into the bundle's model/ folder.
    artifacts: dict[str, Path] = field(default_factory=dict)
    # Warnings a user must see in the manifest (e.g. random calibration data).
    warnings: list[str] = field(default_factory=list)


@dataclass
class PassContext:
    """What a pass may know about the build it runs in."""

    workdir: Path  # a private scratch folder, removed after the build
    target: str
    model_dir: Path  # folder of the source model (external data lives there)
    project_dir: Path | None = None  # folder of gpux.yml: relative paths in pass params resolve here
    # Concrete input shapes the source model verified at: what checks and generated samples use
    # when a pass's own shape parameters are not given.
    reference_shapes: dict[str, list[int]] = field(default_factory=dict)
    # gpux.yml's preprocessing block settled against the model, and the project's tokenizer.json
    # for text: calibration data may then be images or text (gpuxc/project/calibration_raw.py).
    preprocessing: Preprocessing | None = None
    tokenizer: Path | None = None


@dataclass(frozen=True)
class PassSpec:
    """One planned pass: which, with what parameters, and whether failure stops the build."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    required: bool = True


class PassRecord(BaseModel):
    """Provenance of one pass run, as the manifest records it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    params: dict[str, Any]
    required: bool
    status: str  # "applied" | "unchanged" | "skipped"
    reason: str | None = None
    seconds: float
    stats: dict[str, Any]
    warnings: list[str] = []


class PassSkipped(Exception):
    """Raised by a pass that finds nothing to do on this model (recorded as skipped, never an error)."""


ConfigT = TypeVar("ConfigT", bound=PassConfig)


class Pass(Generic[ConfigT]):
    """Base class of graph passes, generic over their parameters: ``class Fp16(Pass[Fp16Config])``
    sets ``name`` and ``Config = Fp16Config`` and implements ``run``, where ``self.config`` is an
    ``Fp16Config``. ``Config`` is what the registry validates and the manager builds the
    instance's config from (a ClassVar cannot name the type variable, so both are written)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type[PassConfig]] = PassConfig

    def __init__(self, config: ConfigT) -> None:
        self.config: ConfigT = config

    @classmethod
    def validate_class(cls) -> None:
        if not (isinstance(cls.Config, type) and issubclass(cls.Config, BaseModel)):
            raise PluginError(f"pass '{cls.name}': Config must be a pydantic model")

    def why_skip(self, model: ModelProto) -> str | None:
        """Why this pass cannot run on ``model`` (it is then recorded as skipped), or ``None``."""
        return None

    def run(self, model: ModelProto, ctx: PassContext) -> PassResult:
        raise NotImplementedError


class PassManager:
    """Runs planned passes in order and records each run (applied, unchanged or skipped)."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self.artifacts: dict[str, Path] = {}  # extra files produced by the passes of the last run

    def instantiate(self, spec: PassSpec) -> Pass[Any]:
        cls = self.registry.pass_(spec.name)
        try:
            config = cls.Config.model_validate(spec.params)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise PassError(f"pass '{spec.name}': bad parameter {loc}: {err['msg']}") from None
        return cls(config)

    def run(
        self, model: ModelProto, specs: list[PassSpec], ctx: PassContext, progress: Any = None
    ) -> tuple[ModelProto, list[PassRecord]]:
        records: list[PassRecord] = []
        for spec in specs:
            instance = self.instantiate(spec)
            params = instance.config.model_dump(mode="json")
            before = _size(model)
            started = time.perf_counter()
            if progress:
                progress(f"pass {spec.name}")
            reason = instance.why_skip(model)
            if reason is not None:
                records.append(PassRecord(name=spec.name, params=params, required=spec.required, status="skipped",
                                          reason=reason, seconds=0.0, stats={}))  # fmt: skip
                continue
            try:
                result = instance.run(model, ctx)
            except PassSkipped as exc:
                records.append(PassRecord(name=spec.name, params=params, required=spec.required, status="skipped",
                                          reason=str(exc), seconds=round(time.perf_counter() - started, 4),
                                          stats={}))  # fmt: skip
                continue
            except GpuxcError as exc:
                if spec.required:
                    raise PassError(f"pass '{spec.name}' failed{_after(records)}: {exc}") from exc
                result = None
                reason = str(exc)
            except Exception as exc:
                if spec.required:
                    raise PassError(
                        f"pass '{spec.name}' failed{_after(records)}: {type(exc).__name__}: {first_line(exc)}"
                    ) from exc
                result = None
                reason = f"{type(exc).__name__}: {first_line(exc)}"
            seconds = round(time.perf_counter() - started, 4)
            if result is None:
                records.append(PassRecord(name=spec.name, params=params, required=False, status="skipped",
                                          reason=reason, seconds=seconds, stats={}))  # fmt: skip
                continue
            after = _size(result.model)
            stats = {"nodes_before": before[0], "nodes_after": after[0],
                     "bytes_before": before[1], "bytes_after": after[1], **result.stats}  # fmt: skip
            records.append(PassRecord(name=spec.name, params=params, required=spec.required,
                                      status="applied" if result.modified else "unchanged",
                                      seconds=seconds, stats=stats, warnings=result.warnings))  # fmt: skip
            self.artifacts.update(result.artifacts)
            model = result.model
        return model, records


def _size(model: ModelProto) -> tuple[int, int]:
    return len(model.graph.node), model.ByteSize()


def _after(records: list[PassRecord]) -> str:
    ran = [r.name for r in records if r.status != "skipped"]
    return f" (after {', '.join(ran)})" if ran else ""
