"""OpenVINO target: ONNX → ``openvino.convert_model`` → IR (model.xml + model.bin).

The CPU plugin's inference precision is a deliberate, recorded choice. On CPUs
with AVX512_BF16/AMX the plugin infers in bf16 unless told otherwise, which is
faster but moves accuracy (FIELD_NOTES: cosine 0.97 on a detection map), so the
hint is always set explicitly: ``f32`` by default, or chosen among the hints the
CPU supports by ``--optimize auto`` / ``inference_precision: auto``, each
candidate verified against the tolerance. The runner applies the recorded hint.

A reduced-precision variant that misses tolerance is repairable (gpuxc/build/repair.py): the
ranking runs on the CPU plugin (sensitivity.py), and the kept nodes are left out of NNCF's
quantization (``ignored_scope``) and marked f32 in the IR for the bf16/f16 hint (precision.py).
The artifact records the CPU capabilities its precision relies on (``requires_isa``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gpuxc.bundle import layout
from gpuxc.bundle.requirements import pinned, version_of
from gpuxc.errors import CompileError, ConfigError, first_line
from gpuxc.passes import PassSpec
from gpuxc.passes.plans import sequence_plan, shapes_plan
from gpuxc.project.model import save_model
from gpuxc.targets import Artifact, Availability, CompileContext, RuntimeSpec, Target, TargetOptions, Variant
from gpuxc_openvino.precision import compute_ops, keep_in_f32, name_after_onnx, with_feeders
from gpuxc_openvino.weights import compress_int4

if TYPE_CHECKING:
    import numpy as np
    from onnx import ModelProto

    from gpuxc.build.sensitivity import NodeSensitivity
    from gpuxc.project.config import GpuxConfig
    from gpuxc.project.model import ModelSignature

# OpenVINO's names for the hints, by our names.
HINTS = {"f32": "f32", "bf16": "bf16", "f16": "f16"}
# CPU capability that makes each reduced-precision hint worth trying.
HINT_CAPABILITY = {"bf16": "BF16", "f16": "FP16"}
# The variant setting naming the nodes to keep in float (gpuxc.build.candidate.KEEP_SETTING).
KEEP_SETTING = "keep_float"


class OpenVinoOptions(TargetOptions):
    """``build.options.openvino`` in gpux.yml."""

    inference_precision: Literal["f32", "bf16", "f16", "auto"] = "f32"
    """CPU plugin inference precision hint; auto tries every hint this CPU supports, verified, fastest kept."""
    device: Literal["CPU", "GPU", "NPU", "AUTO"] = "CPU"
    """Device the runner compiles for (override: --provider or $GPUXC_PROVIDER). Verification here uses CPU."""
    performance_hint: Literal["latency", "throughput"] = "latency"
    """OpenVINO performance hint the runner applies."""
    compress_to_fp16: bool | None = None
    """Store weights as fp16 in model.bin (halves it); default: only for precision fp16."""
    cache_dir: str | None = None
    """Runner CACHE_DIR for compiled blobs (relative to the bundle); default: none."""


class OpenVinoTarget(Target[OpenVinoOptions]):
    name = "openvino"
    description = "OpenVINO IR (xml + bin) for Intel CPUs, GPUs and NPUs; inference precision recorded"
    Options = OpenVinoOptions
    install_hint = "pip install 'gpuxc[openvino]'"

    def check_available(self) -> Availability:
        try:
            import openvino  # noqa: F401
        except ImportError as exc:
            return Availability(available=False, reason=f"openvino is not installed ({exc})",
                                install_hint=self.install_hint)  # fmt: skip
        return Availability(available=True)

    def why_unverifiable(self) -> str | None:
        import openvino as ov

        if "CPU" not in ov.Core().available_devices:
            return "OpenVINO's CPU plugin is not available on this host"
        return None

    def verification_runtime(self) -> str:
        return f"openvino {version_of('openvino')} CPU plugin"

    # -- variants ----------------------------------------------------------------------------

    def _supported_hints(self) -> list[str]:
        import openvino as ov

        caps = set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        return [h for h, cap in HINT_CAPABILITY.items() if cap in caps]

    def variants(self, config: GpuxConfig, options: OpenVinoOptions, auto: bool) -> list[Variant]:
        precision = config.build.precision
        if precision == "int8-dynamic":
            raise ConfigError(
                f"{config.where('build', 'precision')}: int8-dynamic is an ONNX Runtime technique; "
                "the openvino target quantizes with int8-static (NNCF)"
            )
        search = auto or precision == "auto" or options.inference_precision == "auto"
        if not search:
            return [Variant(precision, precision, {"hint": options.inference_precision})]
        hints = self._supported_hints()
        found = [Variant("fp32", "fp32", {"hint": "f32"})]
        for hint in hints:
            # Reduced-precision compute is judged by the fp16 tolerance (cosine >= 0.999 by default).
            found.append(Variant(f"fp32-{hint}-hint", "fp16", {"hint": hint}))
        if config.build.calibration is not None:
            found.append(Variant("int8-static", "int8-static", {"hint": "f32"}))
            if "bf16" in hints:
                # int8 where NNCF quantized, bf16 for the rest (what the CPU plugin would do unasked).
                found.append(Variant("int8-static-bf16-hint", "int8-static", {"hint": "bf16"}))
        if "int4-weights" in config.build.optimize_include:
            found.append(Variant("int4-weights", "int4-weights", {"hint": "f32"}))
        return found

    def keeps_float(self, variant: Variant) -> bool:
        return variant.precision == "int8-static" or variant.settings.get("hint") in HINT_CAPABILITY

    def plan(
        self, config: GpuxConfig, signature: ModelSignature, options: OpenVinoOptions, variant: Variant
    ) -> list[PassSpec]:
        specs = sequence_plan(signature)  # OpenVINO has no tensor-sequence type
        specs += shapes_plan(config, signature)  # declared static shapes: a static IR, about 2x faster
        if variant.precision == "int8-static":
            # NNCF needs real initializers, like ONNX Runtime's quantizers.
            specs.append(PassSpec("fold-constants", {}, required=False))
        return specs

    # -- compile -----------------------------------------------------------------------------

    def compile(self, model: ModelProto, ctx: CompileContext[OpenVinoOptions]) -> Artifact:
        import openvino as ov

        options = ctx.options
        variant = ctx.variant
        ov_model = self._convert(model, ctx.workdir)
        hint = variant.settings.get("hint", "f32")
        if hint == "auto":
            hint = "f32"  # a fixed build with inference_precision auto searches; without search, f32
        kept = list(variant.settings.get(KEEP_SETTING, []))
        if kept and {op.get_friendly_name() for op in compute_ops(ov_model)} <= set(kept):
            # Never an f32 model under a reduced-precision name (the ONNX passes' "skipped").
            raise CompileError(f"openvino: {variant.name} keeps every compute node in f32: nothing left to lower")
        if variant.precision == "int8-static":
            ov_model = self._quantize(ov_model, model, ctx, kept)
        compressed: dict[str, Any] = {}
        if variant.precision == "int4-weights":
            ov_model, compressed = compress_int4(ov_model)  # NNCF, plugins/gpuxc_openvino/weights.py
        # Kept nodes need their f32 weights too: fp16 weights would round them anyway.
        compress = variant.precision == "fp16" and not kept
        if options.compress_to_fp16 is not None:
            compress = options.compress_to_fp16
        model_dir = ctx.bundle_dir / layout.MODEL_DIR
        model_dir.mkdir(parents=True, exist_ok=True)
        ov.save_model(ov_model, str(model_dir / "model.xml"), compress_to_fp16=compress)
        if kept and hint in HINT_CAPABILITY:
            missing = keep_in_f32(model_dir / "model.xml", with_feeders(ov_model, kept))
            if missing:
                raise CompileError(f"openvino: no layer named {', '.join(missing[:3])} to keep in f32")
        settings: dict[str, Any] = {}
        if kept:
            settings["kept_float"] = kept  # in the IR already; recorded for the reader
        return Artifact(
            entry="model/model.xml",
            format="openvino-ir",
            files=["model/model.xml", "model/model.bin"],
            settings={
                "device": options.device,
                "inference_precision": hint,
                "performance_hint": options.performance_hint,
                "cache_dir": options.cache_dir,
                "weights": "fp16" if compress else "fp32",
                "requires_isa": _requires_isa(variant.precision, hint),
                **settings,
                **compressed,
                **variant.settings.get("runtime", {}),  # runtime settings auto chose (tuning.py), or a policy's
            },
        )

    def _convert(self, model: ModelProto, workdir: Path) -> Any:
        """``model`` as an ``openvino.Model`` whose compute ops carry their ONNX node names."""
        import openvino as ov

        source = workdir / "openvino-in.onnx"
        save_model(model, source)
        try:
            ov_model = ov.convert_model(str(source))
        except Exception as exc:
            raise CompileError(_conversion_message(exc, model), hint="fix input shapes with build.shapes") from None
        name_after_onnx(ov_model, source)
        return ov_model

    def rank_sensitivity(self, model: ModelProto, bundle_dir: Path, artifact: Artifact,
                         feeds: list[dict[str, np.ndarray]]) -> list[NodeSensitivity] | None:  # fmt: skip
        import tempfile

        import openvino as ov

        from gpuxc_openvino.sensitivity import rank_ir

        with tempfile.TemporaryDirectory(prefix="gpuxc-ov-rank-") as scratch:
            reference = self._convert(model, Path(scratch))
        lossy = ov.Core().read_model(str(bundle_dir / artifact.entry))
        return rank_ir(reference, "f32", lossy, artifact.settings.get("inference_precision", "f32"), feeds)

    def layer_precisions(self, model: ModelProto, bundle_dir: Path, artifact: Artifact) -> dict[str, str] | None:
        """The compute layers' precision as the CPU plugin runs them (``runtimePrecision``): the hint,
        NNCF's int8 and the kept nodes, as they came out, not as they were asked for."""
        import openvino as ov

        from gpuxc_openvino.precision import compute_ops, runtime_precisions

        if "CPU" not in ov.Core().available_devices:
            return None
        ran = runtime_precisions(self._compiled(bundle_dir, artifact))
        ir = ov.Core().read_model(str(bundle_dir / artifact.entry))
        return {op.get_friendly_name(): ran[op.get_friendly_name()].lower()
                for op in compute_ops(ir) if op.get_friendly_name() in ran}  # fmt: skip

    def _quantize(self, ov_model: Any, model: ModelProto, ctx: CompileContext[OpenVinoOptions],
                  kept: list[str]) -> Any:  # fmt: skip
        try:
            import nncf
        except ImportError:
            raise CompileError("int8-static for openvino needs NNCF: pip install nncf") from None
        from gpuxc.project.calibration import load_samples, random_samples
        from gpuxc.project.preprocessing import TextPreprocessing, tokenizer_path
        from gpuxc.project.reference import resolve_shapes

        config = ctx.config
        cal = config.build.calibration
        if cal is None:
            raise CompileError("int8-static needs build.calibration (data, or random: true)")
        if cal.data is not None:
            tokenizer = tokenizer_path(config) if isinstance(ctx.preprocessing, TextPreprocessing) else None
            samples = load_samples((config.project_dir / cal.data).resolve(), ctx.signature, cal.samples,
                                   where=config.where("build", "calibration", "data"),
                                   preprocessing=ctx.preprocessing, tokenizer=tokenizer)  # fmt: skip
        else:
            shapes = resolve_shapes(ctx.signature, config)
            samples = random_samples(ctx.signature, shapes, cal.samples, config.build.seed, model)
        # MIXED (asymmetric activations): PP-OCRv4 det, text images, 32 samples: cosine 0.9963 -> 0.9975 at
        # the same speed (7.6 vs 7.2 ms, AVX512-VNNI); HSwish and other non-ReLU activations are one-sided.
        extra: dict[str, Any] = {"preset": nncf.QuantizationPreset.MIXED}
        if kept:
            extra["ignored_scope"] = nncf.IgnoredScope(names=kept)
        ops = {n.op_type for n in model.graph.node}
        if {"MatMul", "Softmax"} <= ops:
            # Attention: NNCF's transformer scheme (FIELD_NOTES: cosine 0.06 on BERT without it).
            extra["model_type"] = nncf.ModelType.TRANSFORMER
        from gpuxc_openvino.weights import quiet_nncf

        try:
            with quiet_nncf():  # its progress bars and tables are not gpuxc's console output
                return nncf.quantize(ov_model, nncf.Dataset(samples), subset_size=len(samples), **extra)
        except Exception as exc:
            raise CompileError(f"openvino: NNCF quantization failed: {first_line(exc)}") from None

    def runtime(self, options: OpenVinoOptions, artifact: Artifact) -> RuntimeSpec:
        return RuntimeSpec(
            adapter="openvino/runtime.py",
            requirements=pinned(["openvino", "numpy"]),
            providers=[options.device],
        )

    # -- run here ----------------------------------------------------------------------------

    def _compiled(self, bundle_dir: Path, artifact: Artifact) -> Any:
        import openvino as ov

        hint = artifact.settings.get("inference_precision", "f32")
        config = {"INFERENCE_PRECISION_HINT": HINTS[hint], "PERFORMANCE_HINT": "LATENCY"}
        return ov.Core().compile_model(str(bundle_dir / artifact.entry), "CPU", config)

    def execute(self, bundle_dir: Path, artifact: Artifact, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np

        compiled = self._compiled(bundle_dir, artifact)
        names = _input_names(compiled)
        results = compiled.create_infer_request().infer({k: v for k, v in inputs.items() if k in names})
        out: dict[str, np.ndarray] = {}
        for port in compiled.outputs:
            for name in port.get_names():
                out[name] = np.asarray(results[port])
        return out

    def tuning_candidates(self, artifact: Artifact) -> list[dict[str, Any]]:
        from gpuxc_openvino.tuning import tuning_candidates

        return tuning_candidates(artifact)

    def timer(self, bundle_dir: Path, artifact: Artifact) -> Callable[[dict[str, np.ndarray]], Any]:
        from gpuxc.targets.timing import adapter_timer

        # The runner's own adapter and run path on the CPU, with the artifact's settings (gpuxc/targets/timing.py).
        return adapter_timer("openvino/runtime.py", bundle_dir / artifact.entry, artifact.settings, "CPU")


def _requires_isa(precision: str, hint: str) -> list[str]:
    """The CPU capabilities (OpenVINO's OPTIMIZATION_CAPABILITIES names) the verified precision relies on:
    elsewhere the plugin emulates or falls back, and the numbers or the speed are not the verified ones."""
    needs = ["INT8"] if precision == "int8-static" else []
    if hint in HINT_CAPABILITY:
        needs.append(HINT_CAPABILITY[hint])
    return needs


def _input_names(compiled: Any) -> set[str]:
    """The inputs the compiled model has ports for: OpenVINO drops those whose values are never read
    (CastLike's ``like``); they are fed and ignored, as the bundle's runner does (templates/openvino/runtime.py)."""
    return {name for port in compiled.inputs for name in port.get_names()}


def _conversion_message(exc: Exception, model: ModelProto) -> str:
    """One line naming what OpenVINO could not convert: the nodes and ops when it says which."""
    text = " ".join(str(exc).split())
    by_output = {out: node for node in model.graph.node for out in node.output}
    by_name = {node.name: node for node in model.graph.node if node.name}
    failed = []
    # OpenVINO's ONNX frontend names a node by its first output: "<Node(Conv): /m/Conv_output_0>".
    for op, ref in re.findall(r"<Node\((\w+)\): ([^>]+)>", text):
        node = by_output.get(ref.strip()) or by_name.get(ref.strip())
        failed.append(f"'{node.name or ref.strip()}' ({op})" if node else f"'{ref.strip()}' ({op})")
    if not failed:
        named = re.search(r"node ['\"]?([A-Za-z0-9_./:-]+)", text)
        if named and named.group(1) in by_name:
            failed.append(f"'{named.group(1)}' ({by_name[named.group(1)].op_type})")
    where = f" at node {', '.join(dict.fromkeys(failed))}" if failed else ""
    if not failed and "rank" in text.lower():
        branchy = next((n for n in model.graph.node if n.op_type in ("If", "Loop")), None)
        if branchy is not None:
            where = f" (likely node '{branchy.name}' ({branchy.op_type}): its subgraph has a dynamic rank)"
    missing = re.search(r"No conversion rule found for operations: ([^.]*?)(?: --|$)", text)
    if missing:
        # OpenVINO's summary names the ops ("StringNormalizer-10") after a page of context: lead with it.
        return f"openvino has no conversion for op {missing.group(1).strip()}{where}"
    reason = "an input's rank or shape is not known there" if "rank" in text.lower() else text[:200]
    return f"openvino cannot convert the model{where}: {reason}"
