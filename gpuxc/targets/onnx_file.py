"""The shared base of targets whose artifact is the passed model as an ONNX file (cpu, cuda, directml, tensorrt).

What they have in common is written once here: saving ``model/model.onnx`` (with its external
data files, for models past protobuf's 2 GiB) and executing it on ONNX Runtime for verification.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gpuxc.bundle import layout
from gpuxc.bundle.requirements import version_of
from gpuxc.errors import CompileError
from gpuxc.project.model import save_model
from gpuxc.targets.api import Artifact, CompileContext, OptionsT, Target

if TYPE_CHECKING:
    import numpy as np
    from onnx import ModelProto

ONNX_ENTRY = f"{layout.MODEL_DIR}/model.onnx"


class OnnxFileTarget(Target[OptionsT]):
    """A target shipping ``model/model.onnx``; verification runs it in-process on ONNX Runtime."""

    def save_onnx(self, model: ModelProto, ctx: CompileContext[OptionsT]) -> list[str]:
        """Write ``model`` as ``model/model.onnx``; every file written (external data too), relative to the bundle."""
        try:
            extra = save_model(model, ctx.bundle_dir / ONNX_ENTRY)
        except Exception as exc:
            raise CompileError(f"{self.name}: cannot write the model: {exc}") from None
        return [ONNX_ENTRY, *(f"{layout.MODEL_DIR}/{name}" for name in extra)]

    def execute_providers(self) -> list[str]:
        """The ONNX Runtime execution providers ``execute`` runs the artifact with (CPU unless overridden)."""
        return ["CPUExecutionProvider"]

    def verification_runtime(self) -> str:
        return f"onnxruntime {version_of('onnxruntime')} CPUExecutionProvider"

    def layer_precisions(self, model: ModelProto, bundle_dir: Path, artifact: Artifact) -> dict[str, str] | None:
        """The shipped graph is what runs: its precision is read off it (gpuxc/build/layer_precision.py)."""
        from gpuxc.build.layer_precision import node_precisions

        return node_precisions(model)

    def execute(self, bundle_dir: Path, artifact: Artifact, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from gpuxc.ort_session import run_onnxruntime

        return run_onnxruntime(bundle_dir / artifact.entry, inputs, providers=self.execute_providers())
