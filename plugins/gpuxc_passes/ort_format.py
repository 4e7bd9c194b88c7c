"""``ort-format``: the final model as an ONNX Runtime ``.ort`` file plus its required-operators config.

ONNX Runtime's minimal builds (mobile, embedded) read only the ``.ort`` format, and are
built with just the operators the config lists (``--include_ops_by_config``). The pass
runs ``python -m onnxruntime.tools.convert_onnx_models_to_ort`` (the documented tool) in
the build's scratch folder, checks that ONNX Runtime loads the ``.ort`` file, and returns
the model unchanged with two artifacts, always named ``model.ort`` and
``model.required_operators.config`` whatever the style and level (the tool's own names
depend on both; the stats record them).

The optimizations are applied *before* saving, so the level is part of the artifact:
``extended`` (default) adds ``com.microsoft`` fused ops every full and minimal CPU build
has; ``all`` also bakes in this host's NCHWc layout (as with ``ort-optimize``). ``Runtime``
style saves some optimizations to be replayed at load time (for NNAPI/CoreML); the runner
must then set ``session.enable_saved_runtime_optimizations``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Literal

from onnx import ModelProto

from gpuxc.errors import PassError, first_line
from gpuxc.passes import Pass, PassConfig, PassContext, PassResult, PassSkipped
from gpuxc.project.model import save_model
from gpuxc_passes._common import gigabytes, is_large

# An operator name after the start or a comma (type-reduction JSON after an op holds only quoted strings).
OP_RE = re.compile(r"(?:^|,)\s*([A-Za-z_][A-Za-z0-9_]*)")
ORT_NAME = "model.ort"
CONFIG_NAME = "model.required_operators.config"


class OrtFormatConfig(PassConfig):
    optimization_style: Literal["Fixed", "Runtime"] = "Fixed"
    """Fixed: optimizations applied before saving; Runtime: some saved to be replayed at load (NNAPI/CoreML)."""
    level: Literal["basic", "extended", "all"] = "extended"
    """Optimization level baked into the .ort file; 'all' makes it specific to this host's CPU."""
    target_platform: Literal["amd64", "arm"] | None = None
    """Platform the .ort file is for ('arm' allows int8 QDQ kernels of ARM builds); none: the tool's default."""
    enable_type_reduction: bool = False
    """List the types each operator needs in the config, for an even smaller minimal build."""


class OrtFormat(Pass[OrtFormatConfig]):
    name = "ort-format"
    description = "ONNX Runtime .ort file + required-operators config (minimal builds), model unchanged"
    Config = OrtFormatConfig

    def run(self, model: ModelProto, ctx: PassContext) -> PassResult:
        if is_large(model):
            raise PassSkipped(
                f"the .ort format (flatbuffers) cannot hold a model over 2 GB; this one is {gigabytes(model)}"
            )
        folder = ctx.workdir / "ort-format"
        out_dir = folder / "out"
        out_dir.mkdir(parents=True, exist_ok=True)
        src = folder / "model.onnx"
        save_model(model, src)
        command = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(src),
                   "--output_dir", str(out_dir), "--optimization_style", self.config.optimization_style]  # fmt: skip
        if self.config.target_platform:
            command += ["--target_platform", self.config.target_platform]
        if self.config.enable_type_reduction:
            command.append("--enable_type_reduction")
        # TMPDIR: importing onnxruntime leaves a telemetry file ($TMPDIR/.ses); keep it in the work folder.
        env = {
            **os.environ,
            "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL": self.config.level,
            "TMPDIR": str(folder),
        }
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        ort_files = sorted(out_dir.glob("*.ort"))
        configs = sorted(out_dir.glob("*.config"))
        if done.returncode != 0 or len(ort_files) != 1 or len(configs) != 1:
            raise PassError(f"convert_onnx_models_to_ort failed: {_reason(done)}")
        _check_loads(ort_files[0])
        stats = {
            "optimization_style": self.config.optimization_style,
            "level": self.config.level,
            "ort_bytes": ort_files[0].stat().st_size,
            "files": {ORT_NAME: ort_files[0].name, CONFIG_NAME: configs[0].name},
            "operators": _operator_count(configs[0].read_text(encoding="utf-8")),
        }
        return PassResult(
            model=model,
            modified=False,
            stats=stats,
            artifacts={ORT_NAME: ort_files[0], CONFIG_NAME: configs[0]},
        )


def _reason(done: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in (done.stderr + "\n" + done.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "fail" in ln.lower()]
    line = (errors or lines or [f"exit status {done.returncode}"])[-1]
    return line[:400]


def _check_loads(path: object) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise PassError(f"ONNX Runtime cannot load the .ort file it wrote: {first_line(exc)}") from None


def _operator_count(text: str) -> int:
    """Operators listed in a required-operators config (``domain;opset;Op1,Op2`` lines)."""
    count = 0
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and line.count(";") >= 2:
            count += len(OP_RE.findall(line.split(";", 2)[2]))
    return count
