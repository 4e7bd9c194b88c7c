"""plugins/gpuxc_openvino/weights.py: NNCF int4 weight compression for precision int4-weights."""

from __future__ import annotations

from pathlib import Path

import onnx

from tests.plugins.gpuxc_passes.test_quantize_int4 import matmuls


def test_compress_int4_makes_4_bit_constants_quietly(tmp_path: Path, capfd) -> None:
    import openvino as ov
    from gpuxc_openvino.weights import compress_int4

    onnx.save(matmuls((256, 256), (256, 256), (256, 256)), tmp_path / "m.onnx")
    capfd.readouterr()
    compressed, settings = compress_int4(ov.convert_model(str(tmp_path / "m.onnx")))
    out = capfd.readouterr()
    assert out.out == "" and out.err == ""  # NNCF's table and progress bar stay off gpuxc's console
    assert settings == {"weights": "int4_sym", "group_size": 32, "ratio": 1.0}
    constants = [op for op in compressed.get_ops() if op.get_type_name() == "Constant"]
    types = {op.get_output_element_type(0).get_type_name() for op in constants}
    assert "i4" in types  # NNCF keeps the first and last layer in 8 bits; the middle one is 4-bit
