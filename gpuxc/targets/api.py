"""The target API: what a plugin implements to emit one kind of bundle.

A target plans the passes its runtime needs, compiles the passed model into
artifact files, names the runtime adapter template and pinned requirements of
its bundle, and, when its runtime runs on this host, executes the artifact for
verification. See docs/plugins.md for a worked third-party example.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from gpuxc.errors import PluginError

if TYPE_CHECKING:
    import numpy as np
    from onnx import ModelProto

    from gpuxc.build.sensitivity import NodeSensitivity
    from gpuxc.passes import PassSpec
    from gpuxc.project.config import GpuxConfig
    from gpuxc.project.model import ModelSignature
    from gpuxc.project.preprocessing import Preprocessing


__all__ = ["TargetOptions", "Availability", "RuntimeSpec", "Variant", "CompileContext", "Artifact", "Target"]


class TargetOptions(BaseModel):
    """Base of every target's options (``build.options.<target>`` in gpux.yml)."""

    model_config = ConfigDict(extra="forbid", strict=True)


OptionsT = TypeVar("OptionsT", bound=TargetOptions)


class Availability(BaseModel):
    available: bool
    reason: str | None = None
    install_hint: str | None = None


class RuntimeSpec(BaseModel):
    """How the generated runner executes the artifact."""

    adapter: str  # template name of the runner's runtime adapter, e.g. "onnxruntime/runtime.py"
    requirements: list[str]  # pinned requirement lines for requirements.txt
    providers: list[str] = []  # execution providers / devices the adapter prefers, in order
    settings: dict[str, Any] = {}  # read by the adapter from the manifest at run time
    serves_page: bool = False  # `python <bundle> serve` serves a static page (stdlib), not the FastAPI server


@dataclass(frozen=True)
class Variant:
    """One way to build a target: a precision plus target-specific settings.

    ``--optimize auto`` builds several and keeps the fastest inside tolerance; a fixed
    build has exactly one, from ``build.precision``.
    """

    name: str  # "fp32", "int8-dynamic", ... or target-specific ("fp32-bf16-hint")
    precision: str  # fp32 | fp16 | int8-dynamic | int8-static
    settings: dict[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash(self.name)


@dataclass
class CompileContext(Generic[OptionsT]):
    """What ``Target.compile`` may know about the build: ``options`` is the target's own Options."""

    config: GpuxConfig
    signature: ModelSignature
    options: OptionsT
    bundle_dir: Path  # the staging bundle root; write artifacts under bundle_dir / "model"
    workdir: Path  # scratch space, removed after the build
    variant: Variant = field(default_factory=lambda: Variant("fp32", "fp32"))
    extra_files: dict[str, Path] = field(default_factory=dict)  # pass artifacts (e.g. model.ort), by name
    preprocessing: Preprocessing | None = None  # the settled preprocessing block: calibration images or text


@dataclass
class Artifact:
    entry: str  # path of the main artifact file, relative to the bundle root
    format: str  # "onnx", "ort", "openvino-ir", ...
    files: list[str] = field(default_factory=list)  # every file written, relative to the bundle root
    settings: dict[str, Any] = field(default_factory=dict)  # recorded in the manifest, read by the adapter


class Target(Generic[OptionsT]):
    """Base class of compile targets, generic over their options: ``class CpuTarget(Target[CpuOptions])``
    sets ``Options = CpuOptions`` (what the registry checks and the pipeline validates
    ``build.options.<name>`` with) and receives a ``CpuOptions`` wherever ``options`` is passed.

    The methods are listed in the order the pipeline calls them:

    1. ``check_available``: can this host compile for the target at all?
    2. ``variants``: which builds to make (one, or the candidates of ``--optimize auto``);
       then, for each variant:
    3. ``plan``: the passes its runtime needs, run by the pass manager;
    4. ``compile``: the passed model into artifact files under ``ctx.bundle_dir``;
    5. ``runtime``: the runner's adapter and pinned requirements for the bundle;
    6. verification queries: ``why_unverifiable`` (not executed here at all),
       ``why_stand_in`` (executed on a stand-in runtime), ``verification_runtime`` (what executes it);
    7. ``execute``: run the artifact on the reference inputs (numerics gate), and
       ``timer``: run it repeatedly under ``--optimize auto``, which then tries
       ``tuning_candidates`` (runtime settings) on the variant it chose.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type[TargetOptions]] = TargetOptions
    install_hint: ClassVar[str | None] = None
    # Extra Jinja template folder for a third-party target's adapter (searched before built-ins).
    template_dir: ClassVar[Path | None] = None

    @classmethod
    def validate_class(cls) -> None:
        if not (isinstance(cls.Options, type) and issubclass(cls.Options, BaseModel)):
            raise PluginError(f"target '{cls.name}': Options must be a pydantic model")

    def check_available(self) -> Availability:
        """Whether this host can compile for the target (imports of its toolchain succeed)."""
        return Availability(available=True)

    def variants(self, config: GpuxConfig, options: OptionsT, auto: bool) -> list[Variant]:
        """Variants to build: the configured precision, or under ``auto`` every candidate that applies.

        The first variant of an auto search is the baseline no other may be slower than.
        """
        precision = config.build.precision
        if auto or precision == "auto":
            return [Variant("fp32", "fp32")]
        return [Variant(precision, precision)]

    def plan(
        self, config: GpuxConfig, signature: ModelSignature, options: OptionsT, variant: Variant
    ) -> list[PassSpec]:
        """The passes to run on the source model for ``variant``, in order."""
        return []

    def compile(self, model: ModelProto, ctx: CompileContext[OptionsT]) -> Artifact:
        """Write the passed ``model`` as artifact files under ``ctx.bundle_dir``; what was written."""
        raise NotImplementedError

    def runtime(self, options: OptionsT, artifact: Artifact) -> RuntimeSpec:
        """How the bundle's runner executes ``artifact``: adapter template and pinned requirements."""
        raise NotImplementedError

    def why_unverifiable(self) -> str | None:
        """Why the artifact cannot be executed on this host (then it is recorded unverified), or None."""
        return None

    def why_stand_in(self) -> str | None:
        """When ``execute`` runs the artifact on a stand-in runtime (ONNX Runtime CPU for a
        DirectML or CUDA bundle), why: the numerics gate still applies, but the manifest
        records the bundle as unverified on its own runtime, with this reason. None when the
        target's own runtime executes it."""
        return None

    def verification_runtime(self) -> str:
        """What executes the artifact in ``execute``, for the manifest (e.g. "onnxruntime 1.31.1 CPU")."""
        return self.name

    def execute(self, bundle_dir: Path, artifact: Artifact, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the artifact on this host (for compile-time verification)."""
        raise NotImplementedError

    def timer(self, bundle_dir: Path, artifact: Artifact) -> Callable[[dict[str, np.ndarray]], Any] | None:
        """A function running the artifact once with an already open session, as the runner
        would (for ``--optimize auto`` timing); ``None`` when it cannot run here. Built-in targets
        run it through the bundle's own adapter (``gpuxc.targets.timing.adapter_timer``)."""
        return None

    def tuning_candidates(self, artifact: Artifact) -> list[dict[str, Any]]:
        """Runtime settings ``--optimize auto`` tries on the chosen artifact (threads, spinning, streams):
        each is merged over ``artifact.settings`` and timed through ``timer`` against the settings as
        they are; the fastest beating them by more than 5% is recorded in the artifact's settings (and
        ``variant.settings["runtime"]``), which the adapter applies. Default: nothing to try."""
        return []

    # -- precision repair (optional; gpuxc/build/repair.py) ----------------------------------

    def keeps_float(self, variant: Variant) -> bool:
        """Whether ``compile`` itself honours ``variant.settings["keep_float"]`` (node names to keep in
        float) for this lossy variant: the repair then rebuilds it even without a lossy ONNX pass."""
        return False

    def rank_sensitivity(self, model: ModelProto, bundle_dir: Path, artifact: Artifact,
                         feeds: list[dict[str, np.ndarray]]) -> list[NodeSensitivity] | None:  # fmt: skip
        """The nodes of a variant that missed tolerance, most damaging first, measured on the target's
        own runtime (``model``: what ``compile`` received; ``artifact``: what it wrote under
        ``bundle_dir``); None: gpuxc ranks on the ONNX models before and after the lossy pass."""
        return None

    def layer_precisions(self, model: ModelProto, bundle_dir: Path, artifact: Artifact) -> dict[str, str] | None:
        """Each layer's precision as it runs ("int8", "bf16", "fp32", ...), for the candidate summary;
        ``model`` is what ``compile`` received. None: not known here (the summary leaves it out)."""
        return None
