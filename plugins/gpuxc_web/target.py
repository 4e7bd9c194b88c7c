"""The ``web`` target: the model for ONNX Runtime Web, with the library vendored and a page, verified in Chromium.

The bundle is a static site plus the usual Python runner (docs/targets/web.md):

- ``model/model.onnx``, optimised offline at BASIC (ONNX ops only: ONNX Runtime Web's WASM and
  WebGPU kernels cover the standard opsets, not every contrib op a CPU-specific level would fuse in);
- ``web/ort/``: ONNX Runtime Web's JavaScript and WebAssembly at a pinned version, taken from the npm
  package once into gpuxc's cache with its integrity checked, or from a local copy (``ortweb.py``);
  never a CDN at run time;
- ``web/runner.mjs`` (``load()``, ``infer()``: WebGPU, else WASM) and ``web/index.html`` (verifies the
  bundle's reference in the browser, shows latency, runs a person's own input);
- ``runner/runtime.py`` (templates/web/runtime.py): drives that page in headless Chromium from Python,
  so ``python <bundle> verify``/``run`` and gpuxc's own verification run the model in a real browser.

Before building, ``checks.py`` refuses what no browser loads and records what runs only on WASM.
Verification loads the page in headless Chromium on the WASM backend and gates on the tolerance like
every target; without Chromium (or Playwright) the bundle is recorded unverified, with the reason.
WebGPU is not verified here (no GPU adapter in headless Chromium on this kind of host): the manifest
says so.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gpuxc.bundle import layout
from gpuxc.bundle.requirements import pinned
from gpuxc.bundle.runner_source import template_root
from gpuxc.errors import CompileError, ConfigError
from gpuxc.passes import PassSpec
from gpuxc.passes.plans import onnx_plan
from gpuxc.targets import Artifact, CompileContext, RuntimeSpec, TargetOptions, Variant
from gpuxc.targets.onnx_file import OnnxFileTarget
from gpuxc_web.checks import check_model

if TYPE_CHECKING:
    import numpy as np
    from onnx import ModelProto

    from gpuxc.project.config import GpuxConfig
    from gpuxc.project.model import ModelSignature

ADAPTER = "web/runtime.py"
WEB_DIR = "web"
ORT_DIR = f"{WEB_DIR}/ort"
# templates/web/, copied verbatim: the page reads the manifest (and a text bundle's tokenizer.json)
PAGE_FILES = ("runner.mjs", "tokenizer.mjs", "index.html")
CHROMIUM_ENV = "GPUXC_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WEBGPU_UNVERIFIED = "WebGPU was not run at compile time: headless Chromium has no GPU adapter on this host"
_TIMEOUT_S = 300.0
MAX_IR_VERSION = 13  # ONNX Runtime Web 1.30.0: "max supported IR version: 13"


class WebOptions(TargetOptions):
    """``build.options.web`` in gpux.yml."""

    ort_web_dir: str | None = None
    """A local onnxruntime-web 1.30.0 (node_modules, the package folder, its dist/, or the .tgz) instead
    of gpuxc's cache (filled once from the npm registry, integrity checked)."""
    backend: Literal["auto", "webgpu", "wasm"] = "auto"
    """What the page asks ONNX Runtime Web for: auto tries WebGPU, then WASM (the page reports which ran)."""


def find_chromium() -> str | None:
    """The Chromium to drive: $GPUXC_CHROMIUM, else the first of the usual names on PATH."""
    given = os.environ.get(CHROMIUM_ENV)
    if given:
        return given if Path(given).is_file() else None
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def chromium_version(path: str) -> str:
    """``Chromium 156.0.8078.73`` (what ``--version`` prints), or the file name when it says nothing."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out.strip().splitlines()[0] if out.strip() else Path(path).name


class WebTarget(OnnxFileTarget[WebOptions]):
    name = "web"
    description = "ONNX Runtime Web in the browser (WASM, WebGPU): vendored runtime, ES module, page"
    Options = WebOptions
    install_hint = "pip install 'gpuxc[web]' and apt-get install chromium (to verify in a browser)"

    def variants(self, config: GpuxConfig, options: WebOptions, auto: bool) -> list[Variant]:
        # int8 QDQ and fp16 run in ONNX Runtime Web too; the browser verification gates them.
        precision = "fp32" if auto or config.build.precision == "auto" else config.build.precision
        return [Variant(precision, precision)]

    def plan(self, config: GpuxConfig, signature: ModelSignature, options: WebOptions,
             variant: Variant) -> list[PassSpec]:  # fmt: skip
        level = config.build.optimization_level or "basic"
        if level == "all":
            raise ConfigError(f"{config.where('build', 'optimization_level')}: optimization level 'all' writes "
                              "this CPU's layouts into the model; the web target allows none, basic or extended")
        return onnx_plan(config, variant, level, ["CPUExecutionProvider"], signature=signature)

    def compile(self, model: ModelProto, ctx: CompileContext[WebOptions]) -> Artifact:
        from gpuxc_web.ortweb import ensure_ort_web

        model, lowered = _readable_ir(model)
        files = self.save_onnx(model, ctx)
        size = sum((ctx.bundle_dir / f).stat().st_size for f in files)
        io_dtypes = {t.name: t.dtype for t in [*ctx.signature.inputs, *ctx.signature.outputs]}
        checks = check_model(model, size, io_dtypes)
        local = Path(ctx.options.ort_web_dir).expanduser() if ctx.options.ort_web_dir else None
        if local is not None and not local.is_absolute():
            local = ctx.config.project_dir / local
        ort_web = ensure_ort_web(local=local)
        ort_dir = ctx.bundle_dir / ORT_DIR
        ort_dir.mkdir(parents=True, exist_ok=True)
        for name in sorted(ort_web.files):
            shutil.copyfile(ort_web.folder / name, ort_dir / name)
            files.append(f"{ORT_DIR}/{name}")
        pages = template_root() / WEB_DIR
        for name in PAGE_FILES:
            source = pages / name
            if not source.is_file():
                raise CompileError(f"web: gpuxc installation is incomplete: no {source}")
            shutil.copyfile(source, ctx.bundle_dir / WEB_DIR / name)
            files.append(f"{WEB_DIR}/{name}")
        return Artifact(
            entry=files[0],
            format="web",
            files=files,
            settings={
                "backend": ctx.options.backend,
                "ort_web_version": ort_web.version,
                "ort_web_integrity": ort_web.integrity,
                "ort_web_source": ort_web.source,
                "page": f"{WEB_DIR}/index.html",
                "web_checks": checks.record(),
                "webgpu": {"verified": False, "reason": WEBGPU_UNVERIFIED},
                **({"ir_version_lowered_from": lowered} if lowered else {}),
            },
        )

    def runtime(self, options: WebOptions, artifact: Artifact) -> RuntimeSpec:
        backends: list[str] = ["webgpu", "wasm"] if options.backend == "auto" else [options.backend]
        return RuntimeSpec(adapter=ADAPTER, requirements=pinned(["playwright", "numpy"]), providers=backends,
                           serves_page=True)  # fmt: skip

    # -- verification: the bundle's page in headless Chromium, WASM backend ------------------

    def why_unverifiable(self) -> str | None:
        if find_chromium() is None:
            return (f"no Chromium on this host (apt-get install chromium, or set {CHROMIUM_ENV}): the bundle was not "
                    "run in a browser; python <bundle> verify runs it where one is")  # fmt: skip
        try:
            import playwright  # noqa: F401
        except ImportError:
            return "Playwright is not installed (pip install 'gpuxc[web]'): the bundle was not run in a browser"
        return None

    def verification_runtime(self) -> str:
        if _OPENED:
            info = _OPENED[0][1].provider_info()
            return str(info.get("runtime") or "chromium")
        found = find_chromium()
        return f"{chromium_version(found)} (headless) onnxruntime-web wasm" if found else "chromium"

    def layer_precisions(self, model: ModelProto, bundle_dir: Path, artifact: Artifact) -> dict[str, str] | None:
        return None  # the browser decides per backend; the graph's own precision is recorded by the passes

    def execute(self, bundle_dir: Path, artifact: Artifact, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        adapter, outputs = self._adapter(bundle_dir, artifact)
        return adapter.run(inputs, outputs, _TIMEOUT_S)

    def _adapter(self, bundle_dir: Path, artifact: Artifact) -> tuple[Any, list[str]]:
        """The browser adapter on ``bundle_dir`` and the model's output names, opened once per bundle."""
        if _OPENED and _OPENED[0][0] == bundle_dir:
            return _OPENED[0][1], _OPENED[0][2]
        close_browser()
        from gpuxc.targets.timing import adapter_module

        module = adapter_module(ADAPTER)
        try:
            adapter = module.Adapter(bundle_dir / layout.MODEL_DIR / "model.onnx", dict(artifact.settings), "wasm", [])
        except Exception as exc:  # the page reports ONNX Runtime Web's own error: it names the op
            raise CompileError(str(exc).strip()[:600],
                               hint="docs/targets/web.md says what ONNX Runtime Web runs") from None  # fmt: skip
        outputs = self._outputs(bundle_dir, artifact)
        _OPENED.append((bundle_dir, adapter, outputs))
        return adapter, outputs

    def _outputs(self, bundle_dir: Path, artifact: Artifact) -> list[str]:
        import onnx

        model = onnx.load(str(bundle_dir / layout.MODEL_DIR / "model.onnx"), load_external_data=False)
        return [o.name for o in model.graph.output]


def _readable_ir(model: ModelProto) -> tuple[ModelProto, int | None]:
    """``model`` at an IR version ONNX Runtime Web reads (1.30.0 refuses IR > 13, which recent onnx
    writes by default: the IR version numbers the file format, the opsets say what the ops mean),
    and the version it had when it was lowered."""
    if model.ir_version <= MAX_IR_VERSION:
        return model, None
    import onnx

    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    lowered.ir_version = MAX_IR_VERSION
    return lowered, int(model.ir_version)


# One browser at a time in this process: verification runs several samples on one bundle, then the
# next bundle (or the process's end) closes it.
_OPENED: list[tuple[Path, Any, list[str]]] = []


def close_browser() -> None:
    """Close the Chromium verification opened, if any."""
    while _OPENED:
        _, adapter, _ = _OPENED.pop()
        try:
            adapter.close()
        except Exception:  # a browser already gone
            pass


atexit.register(close_browser)
