"""gpuxc: an ahead-of-time compiler for ONNX models (gpux.yml + model.onnx -> verified bundles)."""

__version__ = "0.1.0"
