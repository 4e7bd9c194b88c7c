"""``fix-shapes``: give symbolic input dimensions fixed values, then re-run shape inference.

Fixed shapes let optimizers fold shape computations and let static-shape
runtimes (TensorRT profiles, CoreML, OpenVINO static IR) compile at all.
"""

from __future__ import annotations

from onnx import ModelProto

from gpuxc.errors import PassError
from gpuxc.passes import Pass, PassConfig, PassContext, PassResult
from gpuxc.project.model import infer_shapes


class FixShapesConfig(PassConfig):
    shapes: dict[str, list[int]]
    """Input name -> full shape. Fixed dims of the model must match; symbolic dims take these values."""


class FixShapes(Pass[FixShapesConfig]):
    name = "fix-shapes"
    description = "replace symbolic input dims with fixed values (build.shapes)"
    Config = FixShapesConfig

    def run(self, model: ModelProto, ctx: PassContext) -> PassResult:
        fixed = ModelProto()
        fixed.CopyFrom(model)
        inputs = {v.name: v for v in fixed.graph.input}
        changed: dict[str, list[int]] = {}
        for name, shape in self.config.shapes.items():
            value = inputs.get(name)
            if value is None:
                raise PassError(f"build.shapes names '{name}', which is not a model input")
            dims = value.type.tensor_type.shape.dim
            if len(dims) != len(shape):
                raise PassError(f"build.shapes.{name} has rank {len(shape)}, the model input has rank {len(dims)}")
            for i, (dim, size) in enumerate(zip(dims, shape, strict=False)):
                # Some exporters (paddle2onnx) write -1 for a dynamic dim: only >= 0 is fixed.
                is_fixed = dim.HasField("dim_value") and dim.dim_value >= 0
                if is_fixed and dim.dim_value != size:
                    raise PassError(
                        f"build.shapes.{name}[{i}] is {size}, but the model fixes that dim to {dim.dim_value}"
                    )
                if not is_fixed:
                    dim.dim_value = size  # clears dim_param (protobuf oneof)
                    changed.setdefault(name, list(shape))
        if not changed:
            return PassResult(model=model, modified=False, stats={})
        # Stale inferred value_info would keep the old symbolic dims.
        del fixed.graph.value_info[:]
        return PassResult(model=infer_shapes(fixed), modified=True, stats={"fixed": changed})
