"""CoreML target: ONNX → MIL program (our own per-op translators) → ML Program ``.mlpackage``.

coremltools dropped its ONNX frontend, and its PyTorch path would need torch at build
time, so the graph is translated op by op (``translate.py``, ``ops/``). Translation is checked
here by comparing every output's name, shape and dtype with the ONNX model; CoreML
itself only runs on macOS, so numeric verification happens there (``python <bundle> verify``).
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import model_validator

from gpuxc.bundle.requirements import pinned, version_of
from gpuxc.errors import CompileError, first_line
from gpuxc.passes import PassSpec
from gpuxc.passes.plans import onnx_plan, sequence_plan
from gpuxc.targets import Artifact, Availability, CompileContext, RuntimeSpec, Target, TargetOptions, Variant

if TYPE_CHECKING:
    import numpy as np
    from onnx import ModelProto

    from gpuxc.project.config import GpuxConfig
    from gpuxc.project.model import ModelSignature

ENTRY = "model/model.mlpackage"
MACOS_ONLY = "CoreML runs only on macOS; python <bundle> verify on a Mac completes it"
DEPLOYMENT_TARGETS = ("iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15")


class CoreMLOptions(TargetOptions):
    """``build.options.coreml`` in gpux.yml."""

    compute_precision: Literal["fp32", "fp16"] = "fp32"
    """Precision of the ML Program's compute; fp16 is CoreML's own default but changes numerics."""
    minimum_deployment_target: Literal["iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15"] = "iOS16"
    """Oldest OS the package loads on (iOS16 = macOS13, the first with the ops used here)."""
    compute_units: Literal["ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"] = "ALL"
    """Which units the runner lets CoreML use (read at run time)."""
    keep_float: list[str] | None = None
    """With fp16 compute: ONNX node names whose MIL ops stay fp32. null: the nodes whose own error on
    the fp16 proxy (the fp16 converter's model on ONNX Runtime CPU) is 1% or more, at most 8; []: none."""

    @model_validator(mode="after")
    def _keep_needs_fp16(self) -> CoreMLOptions:
        if self.keep_float and self.compute_precision != "fp16":
            raise ValueError("keep_float applies to compute_precision: fp16 (fp32 compute keeps every op fp32)")
        return self


class CoreMLTarget(Target[CoreMLOptions]):
    name = "coreml"
    description = "CoreML ML Program (.mlpackage) for Apple devices; verified on macOS only"
    Options = CoreMLOptions
    install_hint = "pip install 'gpuxc[coreml]'"

    def check_available(self) -> Availability:
        try:
            import coremltools  # noqa: F401
        except ImportError as exc:
            return Availability(available=False, reason=f"coremltools is not installed ({exc})",
                                install_hint=self.install_hint)  # fmt: skip
        return Availability(available=True)

    def why_unverifiable(self) -> str | None:
        return None if sys.platform == "darwin" else MACOS_ONLY

    def verification_runtime(self) -> str:
        return f"coremltools {version_of('coremltools')} (CoreML, CPU_ONLY)"

    def variants(self, config: GpuxConfig, options: CoreMLOptions, auto: bool) -> list[Variant]:
        # CoreML quantizes through its own optimizers, not ONNX passes: one fp32-graph variant,
        # with compute precision taken from the options.
        return [Variant(options.compute_precision, "fp32" if options.compute_precision == "fp32" else "fp16")]

    def plan(
        self, config: GpuxConfig, signature: ModelSignature, options: CoreMLOptions, variant: Variant
    ) -> list[PassSpec]:
        # The translators read shapes, axes and slice bounds as constants: fold first, then
        # BASIC optimization (no ORT-only fused ops such as FusedConv, which have no translator).
        specs = sequence_plan(signature)  # MIL has no tensor-sequence type
        specs += _with_pixels_fixed(onnx_plan(config, Variant("fp32", "fp32"), "none", ["CPUExecutionProvider"],
                                              signature=signature), config, signature)  # fmt: skip
        specs.append(PassSpec("fold-constants", {}, required=False))
        specs.append(PassSpec("ort-optimize", {"level": "basic", "providers": ["CPUExecutionProvider"]}))
        return specs

    def compile(self, model: ModelProto, ctx: CompileContext[CoreMLOptions]) -> Artifact:
        import coremltools as ct

        from gpuxc.project.reference import resolve_shapes
        from gpuxc_coreml.translate import (
            Untranslatable,
            build_program,
            describe_unsupported,
            signature_mismatches,
            unsupported_ops,
            widened_inputs,
        )

        options = ctx.options
        # Every missing op is reported at once, before anything is written.
        missing = unsupported_ops(model)
        if missing:
            raise CompileError(describe_unsupported(missing), hint="see docs/targets/coreml.md for the op coverage")
        shapes = resolve_shapes(ctx.signature, ctx.config)
        scalars = [name for name, shape in shapes.items() if not shape]
        if scalars:  # coremltools' own error ("Rank-0 (input None) is unsupported") names no input
            raise CompileError(f"coreml: input '{scalars[0]}' is a scalar; Core ML inputs have rank 1 to 5",
                               hint="give the model a [1]-shaped input instead")  # fmt: skip
        try:
            program = build_program(model, shapes)
        except Untranslatable as exc:
            raise CompileError(f"coreml: {first_line(exc)}", hint="fix input shapes with build.shapes") from None
        mismatches = signature_mismatches(model, shapes, program)
        if mismatches:
            raise CompileError("coreml translation is wrong: " + "; ".join(mismatches[:3]))
        precision: Any = ct.precision.FLOAT32
        fp16: dict[str, Any] = {}
        if options.compute_precision == "fp16":
            precision, fp16 = self._fp16_precision(model, ctx, program)
        # ct.convert drops its weights TemporaryDirectory without cleanup() on return, which
        # warns ResourceWarning (an error under -W error); the folder is removed either way.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Implicitly cleaning up", category=ResourceWarning)
            # Tensor names that are not identifiers are renamed; _check_saved maps them for the runner.
            warnings.filterwarnings("ignore", message=".*has been renamed to")
            try:
                # coremltools draws tqdm progress bars of its MIL pipelines on stderr: noise on an
                # ordinary compile (and in CI logs). The errors still come back as exceptions.
                with contextlib.redirect_stderr(io.StringIO()):
                    mlmodel = ct.convert(
                        program,
                        convert_to="mlprogram",
                        compute_precision=precision,
                        minimum_deployment_target=getattr(ct.target, options.minimum_deployment_target),
                        skip_model_load=True,  # loading compiles the model, which needs macOS
                    )
            except Exception as exc:
                raise CompileError(f"coremltools could not convert the MIL program: {first_line(exc)}") from None
        path = ctx.bundle_dir / ENTRY
        path.parent.mkdir(parents=True, exist_ok=True)
        mlmodel.save(str(path))
        input_names, output_names = self._check_saved(path, ctx.signature)
        return Artifact(
            entry=ENTRY,
            format="mlpackage",
            files=[ENTRY],
            settings={
                "compute_units": options.compute_units,
                "compute_precision": options.compute_precision,
                "minimum_deployment_target": options.minimum_deployment_target,
                "input_shapes": shapes,
                # ONNX name -> the name in the package (coremltools turns '/', '.', ':' into '_');
                # null: an input the program never reads, which the package does not have (fed, ignored).
                "input_names": input_names,
                "output_names": output_names,
                # ML Program inputs cannot be uint8 (image preprocessing's pixels): ONNX input ->
                # the dtype the package takes, which the adapter casts the feed to (exact).
                "input_dtypes": widened_inputs(model),
            }
            | ({"fp16_kept_fp32": fp16} if fp16 else {}),
        )

    def _fp16_precision(self, model: ModelProto, ctx: CompileContext[CoreMLOptions], program: Any) -> tuple[Any, dict]:
        """FP16ComputePrecision with the kept nodes' MIL ops declined, and what the manifest says of it."""
        import coremltools as ct

        from gpuxc_coreml.precision import RANKED_ON, choose_kept, kept_mil_vars, op_selector

        kept = choose_kept(model, ctx, ctx.options.keep_float)
        variables = kept_mil_vars(program, model, [k["node"] for k in kept])
        record = {
            "nodes": kept,
            "mil_ops": sorted(variables),
            "chosen_on": RANKED_ON if ctx.options.keep_float is None else "build.options.coreml.keep_float",
            # The choice is the proxy's (or the user's); Core ML's own fp16 never ran on it here.
            "verified": False,
            "reason": self.why_unverifiable() or "chosen before Core ML ran; the verification judges the package",
        }
        return ct.transform.FP16ComputePrecision(op_selector=op_selector(variables)), record

    def _check_saved(self, path: Path, signature: ModelSignature) -> tuple[dict[str, str | None], dict[str, str]]:
        """The package on disk must take and give the ONNX tensors, in order. coremltools may
        rename them to identifiers; the returned maps (ONNX name -> package name) let the runner
        and verification translate, and anything but that renaming is an error."""
        import coremltools as ct

        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
        got_in = [i.name for i in spec.description.input]
        got_out = [o.name for o in spec.description.output]
        want_in = [t.name for t in signature.inputs]
        want_out = [t.name for t in signature.outputs]

        def mapping(want: list[str], got: list[str]) -> dict[str, str] | None:
            if len(want) != len(got):
                return None
            pairs = dict(zip(want, got, strict=True))
            return pairs if all(g == w or _renamed(w, g) for w, g in pairs.items()) else None

        inputs, outputs = _input_mapping(want_in, got_in), mapping(want_out, got_out)
        if inputs is None or outputs is None:
            raise CompileError(f"coreml package takes {got_in} and gives {got_out}; "
                               f"the ONNX model takes {want_in} and gives {want_out}")  # fmt: skip
        return inputs, outputs

    def runtime(self, options: CoreMLOptions, artifact: Artifact) -> RuntimeSpec:
        version = version_of("coremltools")
        coreml = f"coremltools=={version}" if version else "coremltools>=8.0"
        return RuntimeSpec(
            adapter="coreml/runtime.py",
            requirements=[f"{coreml}; sys_platform == 'darwin'", *pinned(["numpy"])],
            providers=[options.compute_units],
        )

    def execute(self, bundle_dir: Path, artifact: Artifact, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import coremltools as ct
        import numpy as np

        # Verification pins the CPU so the numerics gate is not judged on the Neural Engine's fp16.
        model = ct.models.MLModel(str(bundle_dir / artifact.entry), compute_units=ct.ComputeUnit.CPU_ONLY)
        names_in = artifact.settings.get("input_names", {})
        names_out = {v: k for k, v in artifact.settings.get("output_names", {}).items()}
        casts = artifact.settings.get("input_dtypes", {})

        def fed(name: str, value: np.ndarray) -> np.ndarray:  # as the bundle's adapter feeds it
            return value.astype(casts.get(name, np.int32 if value.dtype == np.int64 else value.dtype))

        feeds = {names_in.get(k, k): fed(k, v) for k, v in inputs.items() if names_in.get(k, k) is not None}
        return {names_out.get(k, k): np.asarray(v) for k, v in model.predict(feeds).items()}


def _with_pixels_fixed(specs: list[PassSpec], config: GpuxConfig, signature: ModelSignature) -> list[PassSpec]:
    """``specs`` with image preprocessing's pixel input fixed at its reference shape (the package's).

    The package's inputs are static, so the shipped ONNX (whose inputs the manifest lists) says so
    too: the runner reads the fixed height and width there and brings decoded pictures to them."""
    from gpuxc.project.reference import resolve_shapes

    pre = config.preprocessing
    tensor = signature.input(pre.image_input) if pre.kind == "image" else None
    if tensor is None or tensor.dtype != "uint8" or all(isinstance(d, int) for d in tensor.shape or []):
        return specs
    shape = resolve_shapes(signature, config)[tensor.name]
    for i, spec in enumerate(specs):
        if spec.name == "fix-shapes":
            shapes = {tensor.name: shape, **spec.params.get("shapes", {})}  # build.shapes wins
            specs[i] = replace(spec, params={**spec.params, "shapes": shapes})
            return specs
    return [PassSpec("fix-shapes", {"shapes": {tensor.name: shape}}), *specs]


def _input_mapping(want: list[str], got: list[str]) -> dict[str, str | None] | None:
    """ONNX input -> package input, in order; None for an input the package lacks (the MIL program
    drops inputs nothing reads, e.g. after fold-sequences picks one item); None if they do not match."""
    pairs: dict[str, str | None] = {}
    rest = list(got)
    for name in want:
        if rest and (rest[0] == name or _renamed(name, rest[0])):
            pairs[name] = rest.pop(0)
        else:
            pairs[name] = None
    if rest or (want and all(v is None for v in pairs.values())):
        return None  # a package input no ONNX input accounts for, or none kept at all
    return pairs


def _renamed(onnx_name: str, package_name: str) -> bool:
    """Whether coremltools' name sanitizer (MIL's ``NameSanitizer``) turns ``onnx_name`` into
    ``package_name``: other characters to ``_``; a ``var_`` prefix when it does not start with a
    letter or ``_`` (PyTorch exports name tensors ``0``, ``1``...); ``_workaround`` after a reserved
    word; ``_0``, ``_1``... when the result was taken."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", onnx_name)
    if re.match(r"[^A-Za-z_]", base):
        base = "var_" + base
    return re.fullmatch(re.escape(base) + r"(_workaround)?(_\d+)*", package_name) is not None

