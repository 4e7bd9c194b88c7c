"""The ONNX op translators, one module per op family; importing this package registers them all."""

from gpuxc_coreml.ops import activation, conv, elementwise, matmul, normalization, reduce, shape, tensor

__all__ = ["activation", "conv", "elementwise", "matmul", "normalization", "reduce", "shape", "tensor"]
