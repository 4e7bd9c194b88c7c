"""Build the example's tiny 5-class image classifier and write it to ``model.onnx``.

The weights are random but seeded, so every run writes byte-identical output; the model
is untrained -- it exists to exercise the compiler and the server, not to classify
anything. Run from anywhere::

    python examples/image-classifier/make_model.py [-o OUTPUT]

Graph: ``image[batch,3,64,64]`` -> Conv(8) -> Relu -> MaxPool/2 -> Conv(16) -> Relu
-> GlobalAveragePool -> Flatten -> Gemm(5) -> Softmax -> ``probs[batch,5]``.
The batch dim is symbolic; ``gpux.yml`` pins it to 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Resolved from this file, not the cwd, so the model always lands next to gpux.yml.
HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "model.onnx"

SEED = 0
OPSET = 17
IR_VERSION = 8
NUM_CLASSES = 5  # cat, dog, bird, fish, frog -- the order of `labels` in gpux.yml
IMAGE_SIZE = 64


def _he(rng: np.random.Generator, *shape: int) -> np.ndarray:
    # He init keeps activations in a sane range so the softmax is not saturated.
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def build_model() -> onnx.ModelProto:
    """Return the classifier as a checked ``onnx.ModelProto``."""
    rng = np.random.default_rng(SEED)
    weights = {
        "conv1_W": _he(rng, 8, 3, 3, 3),
        "conv1_B": np.zeros(8, np.float32),
        "conv2_W": _he(rng, 16, 8, 3, 3),
        "conv2_B": np.zeros(16, np.float32),
        "fc_W": _he(rng, 5, 16),  # Gemm with transB=1: [out, in], the PyTorch Linear layout
        "fc_B": (rng.standard_normal(NUM_CLASSES) * 0.1).astype(np.float32),
    }
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["image", "conv1_W", "conv1_B"], ["c1"], name="conv1", **conv),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2_W", "conv2_B"], ["c2"], name="conv2", **conv),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc_W", "fc_B"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "image_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", NUM_CLASSES])],
        initializer=[numpy_helper.from_array(arr, name=name) for name, arr in weights.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="gpuxc-example",
        producer_version="1",
        doc_string="Tiny untrained 5-class image classifier (seeded weights) for the gpuxc example.",
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT, help=f"default: {DEFAULT_OUTPUT}")
    args = parser.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(build_model(), str(args.output))
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
