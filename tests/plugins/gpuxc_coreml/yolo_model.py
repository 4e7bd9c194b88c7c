"""A YOLOv8-style detector built with onnx.helper: a small strided conv backbone with SiLU, then the
v8 detection head as a dynamic-shape export writes it (per-level box/class convs, Reshape/Concat,
anchors from Shape -> Gather -> Range -> Cast -> Add 0.5 -> Unsqueeze/Expand meshgrid, strides from
ConstantOfShape, DFL Softmax + Conv, Split, dist2bbox Sub/Add/Div/Mul, Sigmoid, Concat, Transpose).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REG_MAX = 16
CLASSES = 3


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(8)

    def op(self, op_type: str, inputs: list[str], out: str, **kwargs: object) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **kwargs))
        return out

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def conv_silu(self, x: str, cin: int, cout: int, stride: int, name: str) -> str:
        w = self.init(f"{name}.w", (self.rng.standard_normal((cout, cin, 3, 3)) * 0.3).astype(np.float32))
        b = self.init(f"{name}.b", (self.rng.standard_normal(cout) * 0.1).astype(np.float32))
        c = self.op("Conv", [x, w, b], f"{name}.conv", kernel_shape=[3, 3], strides=[stride, stride],
                    pads=[1, 1, 1, 1])  # fmt: skip
        return self.op("Mul", [c, self.op("Sigmoid", [c], f"{name}.sig")], f"{name}.silu")

    def conv1x1(self, x: str, cin: int, cout: int, name: str) -> str:
        w = self.init(f"{name}.w", (self.rng.standard_normal((cout, cin, 1, 1)) * 0.3).astype(np.float32))
        b = self.init(f"{name}.b", (self.rng.standard_normal(cout) * 0.5).astype(np.float32))
        return self.op("Conv", [x, w, b], f"{name}.conv", kernel_shape=[1, 1])

    def anchors(self, feat: str, stride: int, level: int) -> tuple[str, str]:
        """make_anchors for one level: ([h*w, 2] centres in grid units, [h*w, 1] strides)."""
        p = f"anc{level}"
        shape = self.op("Shape", [feat], f"{p}.shape")
        h = self.op("Gather", [shape, "i2"], f"{p}.h", axis=0)
        w = self.op("Gather", [shape, "i3"], f"{p}.w", axis=0)
        sx = self.op("Add", [self.op("Cast", [self.op("Range", ["i0", w, "i1"], f"{p}.rx")], f"{p}.fx", to=1), "half"],
                     f"{p}.sx")  # fmt: skip
        sy = self.op("Add", [self.op("Cast", [self.op("Range", ["i0", h, "i1"], f"{p}.ry")], f"{p}.fy", to=1), "half"],
                     f"{p}.sy")  # fmt: skip
        h1, w1 = self.op("Unsqueeze", [h, "ax0"], f"{p}.h1"), self.op("Unsqueeze", [w, "ax0"], f"{p}.w1")
        hw = self.op("Concat", [h1, w1], f"{p}.hw", axis=0)
        gx = self.op("Expand", [self.op("Unsqueeze", [sx, "ax0"], f"{p}.sx1"), hw], f"{p}.gx")
        gy = self.op("Expand", [self.op("Unsqueeze", [sy, "ax1"], f"{p}.sy1"), hw], f"{p}.gy")
        grid = self.op("Concat", [self.op("Unsqueeze", [gx, "axm1"], f"{p}.gx1"),
                                  self.op("Unsqueeze", [gy, "axm1"], f"{p}.gy1")], f"{p}.grid", axis=-1)  # fmt: skip
        points = self.op("Reshape", [grid, "m1_2"], f"{p}.points")
        strides_shape = self.op("Concat", [self.op("Reshape", [self.op("Mul", [h, w], f"{p}.hw_n"), "one_shape"],
                                                   f"{p}.hw_n1"), "i1_1d"], f"{p}.sshape", axis=0)  # fmt: skip
        value = helper.make_tensor("v", TensorProto.FLOAT, [1], [float(stride)])
        return points, self.op("ConstantOfShape", [strides_shape], f"{p}.strides", value=value)


def yolov8_style(size: int = 64, opset: int = 17) -> onnx.ModelProto:
    """The detector at a fixed ``size`` x ``size`` input; output0 is [1, 4 + CLASSES, anchors] as in v8."""
    b = _Builder()
    for name, value in (("i0", 0), ("i1", 1), ("i2", 2), ("i3", 3)):
        b.init(name, np.array(value, np.int64))
    for name, value in (("ax0", [0]), ("ax1", [1]), ("axm1", [-1]), ("m1_2", [-1, 2]), ("one_shape", [1]),
                        ("i1_1d", [1]), ("split_box_cls", [4 * REG_MAX, CLASSES]), ("split_2", [2, 2])):  # fmt: skip
        b.init(name, np.array(value, np.int64))
    b.init("half", np.array(0.5, np.float32))
    b.init("two", np.array(2.0, np.float32))
    b.init("dfl.w", np.arange(REG_MAX, dtype=np.float32).reshape(1, REG_MAX, 1, 1))
    x = b.conv_silu("images", 3, 8, 2, "stem")
    x = b.conv_silu(x, 8, 8, 2, "b1")
    feats, channels = [], 8
    for level, stride in enumerate((8, 16, 32)):
        x = b.conv_silu(x, channels, 16, 2, f"p{level}")
        feats.append((x, stride))
        channels = 16
    outs, points, strides = [], [], []
    for level, (feat, stride) in enumerate(feats):
        box = b.conv1x1(b.conv_silu(feat, 16, 16, 1, f"cv2_{level}"), 16, 4 * REG_MAX, f"cv2_{level}.out")
        cls = b.conv1x1(b.conv_silu(feat, 16, 16, 1, f"cv3_{level}"), 16, CLASSES, f"cv3_{level}.out")
        cat = b.op("Concat", [box, cls], f"head{level}", axis=1)
        b.init(f"flat{level}", np.array([1, 4 * REG_MAX + CLASSES, -1], np.int64))
        outs.append(b.op("Reshape", [cat, f"flat{level}"], f"head{level}.flat"))
        p, s = b.anchors(feat, stride, level)
        points.append(p)
        strides.append(s)
    x_cat = b.op("Concat", outs, "x_cat", axis=2)
    anchors = b.op("Unsqueeze", [b.op("Transpose", [b.op("Concat", points, "anchors", axis=0)], "anchors.t",
                                      perm=[1, 0]), "ax0"], "anchors.u")  # fmt: skip
    stride_t = b.op("Transpose", [b.op("Concat", strides, "strides", axis=0)], "strides.t", perm=[1, 0])
    box_raw, cls_raw = "box_raw", "cls_raw"
    b.nodes.append(helper.make_node("Split", [x_cat, "split_box_cls"], [box_raw, cls_raw], axis=1, name="split"))
    # DFL: [1, 64, A] -> [1, 4, 16, A] -> softmax over the 16 bins -> expectation by a 1x1 conv.
    b.init("dfl_shape", np.array([1, 4, REG_MAX, -1], np.int64))
    b.init("box_shape", np.array([1, 4, -1], np.int64))
    bins = b.op("Transpose", [b.op("Reshape", [box_raw, "dfl_shape"], "dfl.r")], "dfl.t", perm=[0, 2, 1, 3])
    dfl = b.op("Conv", [b.op("Softmax", [bins], "dfl.softmax", axis=1), "dfl.w"], "dfl.conv", kernel_shape=[1, 1])
    dist = b.op("Reshape", [dfl, "box_shape"], "dist")
    b.nodes.append(helper.make_node("Split", [dist, "split_2"], ["lt", "rb"], axis=1, name="dist.split"))
    x1y1 = b.op("Sub", [anchors, "lt"], "x1y1")
    x2y2 = b.op("Add", [anchors, "rb"], "x2y2")
    centre = b.op("Div", [b.op("Add", [x1y1, x2y2], "c2"), "two"], "cxy")
    wh = b.op("Sub", [x2y2, x1y1], "wh")
    dbox = b.op("Mul", [b.op("Concat", [centre, wh], "xywh", axis=1), stride_t], "dbox")
    out0 = b.op("Concat", [dbox, b.op("Sigmoid", [cls_raw], "scores")], "output0", axis=1)
    b.op("Transpose", [out0], "output0_t", perm=[0, 2, 1])
    n = sum((size // s) ** 2 for _, s in feats)
    graph = helper.make_graph(
        b.nodes, "yolov8_style", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + CLASSES, n]),
         helper.make_tensor_value_info("output0_t", TensorProto.FLOAT, [1, n, 4 + CLASSES])], b.inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model
