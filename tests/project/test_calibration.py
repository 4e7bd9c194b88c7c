"""gpuxc.project.calibration: the three sample layouts, their checks, and generated samples."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from fixtures import models
from gpuxc.errors import ConfigError
from gpuxc.project.calibration import load_samples, load_validation_samples, random_samples, resolve_model_shapes
from gpuxc.project.config_load import load_config
from gpuxc.project.model import ModelSignature, describe, load_model
from gpuxc.project.reference import generate, index_bounds


def signature(model: onnx.ModelProto) -> ModelSignature:
    return describe(model, sha256="", size_bytes=0, external=[])


MLP = signature(models.mlp())  # x float32[N, 8]
MULTI = signature(models.multi_io())  # a, b float32[2, 3]; k int32[2, 3]
TEXT = signature(models.int64_text_model())  # input_ids, attention_mask int64[batch, seq]


def error(data: Path, sig: ModelSignature = MLP, samples: int = 8, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_samples(data, sig, samples, **kwargs)
    message = str(info.value)
    assert "\n" not in message  # one line, always
    return message


# -- layouts ---------------------------------------------------------------------------------


def test_folder_of_npz_one_sample_each_in_sorted_order(tmp_path: Path) -> None:
    for name, value in [("c.npz", 3.0), ("a.npz", 1.0), ("b.npz", 2.0)]:
        np.savez(tmp_path / name, x=np.full((1, 8), value, np.float32))
    (tmp_path / "README.txt").write_text("not a sample")
    samples = load_samples(tmp_path, MLP, 2)
    assert [float(s["x"][0, 0]) for s in samples] == [1.0, 2.0]  # at most 2, by file name
    assert len(load_samples(tmp_path, MLP, 10)) == 3


def test_folder_of_npy_for_a_single_input_model(tmp_path: Path) -> None:
    for i in range(3):
        np.save(tmp_path / f"{i:02d}.npy", np.full((2, 8), i, np.float32))
    samples = load_samples(tmp_path, MLP, 32)
    assert [list(s) for s in samples] == [["x"]] * 3
    assert [float(s["x"][0, 0]) for s in samples] == [0.0, 1.0, 2.0]


def test_one_npz_with_a_leading_sample_axis(tmp_path: Path) -> None:
    ids = np.arange(5 * 2 * 7).reshape(5, 2, 7) % 50
    np.savez(tmp_path / "calib.npz", input_ids=ids, attention_mask=np.ones((5, 2, 7), np.int64))
    samples = load_samples(tmp_path / "calib.npz", TEXT, 3)
    assert len(samples) == 3
    np.testing.assert_array_equal(samples[2]["input_ids"], ids[2])
    assert samples[0]["attention_mask"].shape == (2, 7)


def test_one_npz_at_the_model_rank_is_one_sample(tmp_path: Path) -> None:
    np.savez(tmp_path / "one.npz", x=np.ones((4, 8), np.float32))
    [sample] = load_samples(tmp_path / "one.npz", MLP, 32)
    assert sample["x"].shape == (4, 8)


def test_float_widths_are_cast_to_the_models(tmp_path: Path) -> None:
    values = np.random.default_rng(0).standard_normal((3, 1, 8))  # NumPy's default float64
    np.savez(tmp_path / "calib.npz", x=values)
    samples = load_samples(tmp_path / "calib.npz", MLP, 3)
    assert samples[1]["x"].dtype == np.float32
    np.testing.assert_array_equal(samples[1]["x"], values[1].astype(np.float32))


def test_integers_are_cast_when_every_value_fits(tmp_path: Path) -> None:
    a = np.zeros((2, 3), np.float32)
    np.savez(tmp_path / "ok.npz", a=a, b=a, k=np.arange(6, dtype=np.int64).reshape(2, 3))
    [sample] = load_samples(tmp_path / "ok.npz", MULTI, 1)
    assert sample["k"].dtype == np.int32
    np.savez(tmp_path / "big.npz", a=a, b=a, k=np.full((2, 3), 2**40, np.int64))
    message = error(tmp_path / "big.npz", MULTI)
    assert "'big.npz': 'k' is int64, the model wants int32, and holds values 1099511627776..1099511627776" in message


def test_string_inputs_take_unicode_arrays(tmp_path: Path) -> None:
    sig = ModelSignature.model_validate(
        {**MLP.model_dump(), "inputs": [{"name": "text", "dtype": "string", "shape": ["N"]}]}
    )
    np.savez(tmp_path / "s.npz", text=np.array(["a", "bc"]))
    [sample] = load_samples(tmp_path / "s.npz", sig, 1)
    assert sample["text"].dtype == object and list(sample["text"]) == ["a", "bc"]


# -- mismatches: one line naming file, input, expected and got ---------------------------------


def test_missing_input_name(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", a=np.zeros((2, 3), np.float32), k=np.zeros((2, 3), np.int32))
    message = error(tmp_path / "s.npz", MULTI)
    assert message == "'s.npz' has no array named 'b' (has: a, k; the model wants: a, b, k)"


def test_extra_array_name(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", x=np.zeros((1, 8), np.float32), y=np.zeros(3))
    assert error(tmp_path / "s.npz") == "'s.npz' has an array 'y' that is not a model input (inputs: x)"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.zeros((1, 8), np.int64), "'s.npz': 'x' is int64, the model wants float32 (calibration data is cast between "
                                     "float widths only, never from integers)"),
        (np.zeros((1, 8), bool), "'s.npz': 'x' is bool, the model wants float32"),
    ],
)  # fmt: skip
def test_dtype_of_another_kind_is_refused(tmp_path: Path, value: np.ndarray, expected: str) -> None:
    np.savez(tmp_path / "s.npz", x=value)
    assert error(tmp_path / "s.npz").startswith(expected)


def test_float_for_an_integer_input_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", input_ids=np.zeros((1, 4)), attention_mask=np.ones((1, 4), np.int64))
    message = error(tmp_path / "s.npz", TEXT)
    assert message.startswith("'s.npz': 'input_ids' is float64, the model wants int64 (integers are cast only")


def test_float_overflowing_the_models_width_is_refused(tmp_path: Path) -> None:
    sig = ModelSignature.model_validate({**MLP.model_dump(), "inputs": [{"name": "x", "dtype": "float16",
                                                                           "shape": ["N", 8]}]})  # fmt: skip
    np.savez(tmp_path / "s.npz", x=np.full((1, 8), 1e6))
    assert "some values overflow float16" in error(tmp_path / "s.npz", sig)


def test_wrong_rank(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", x=np.zeros((2, 3, 4, 8), np.float32))
    message = error(tmp_path / "s.npz")
    assert message == (
        "'s.npz': 'x' has rank 4 (shape [2, 3, 4, 8]), the model wants rank 2 (or 3 with a leading sample axis): [N, 8]"
    )
    folder = tmp_path / "calib"
    folder.mkdir()
    np.savez(folder / "a.npz", x=np.zeros((5, 1, 8), np.float32))  # a folder holds one sample per file
    assert error(folder).startswith("'calib/a.npz': 'x' has rank 3 (shape [5, 1, 8]), the model wants rank 2: ")


def test_fixed_dim_mismatch(tmp_path: Path) -> None:
    np.save(tmp_path / "0.npy", np.zeros((1, 9), np.float32))
    assert error(tmp_path) == f"'{tmp_path.name}/0.npy': 'x' has shape [1, 9], the model fixes dim 1 to 8: [N, 8]"


def test_shared_symbolic_dim_must_agree_across_inputs(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", input_ids=np.zeros((1, 4), np.int64), attention_mask=np.ones((1, 5), np.int64))
    assert error(tmp_path / "s.npz", TEXT) == "'s.npz': dim 'seq' is 4 in 'input_ids' but 5 in 'attention_mask'"


def test_samples_counts_must_agree_in_one_npz(tmp_path: Path) -> None:
    ids = np.zeros((3, 1, 4), np.int64)
    np.savez(tmp_path / "s.npz", input_ids=ids, attention_mask=np.ones((2, 1, 4), np.int64))
    message = error(tmp_path / "s.npz", TEXT)
    assert message == "'s.npz': the arrays hold different numbers of samples ('input_ids' 3, 'attention_mask' 2)"


def test_npy_folder_for_a_multi_input_model(tmp_path: Path) -> None:
    np.save(tmp_path / "0.npy", np.zeros((2, 3), np.float32))
    message = error(tmp_path, MULTI)
    assert "holds .npy files, which only work for a model with one input; this model has 3 (a, b, k)" in message


def test_empty_and_mixed_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error(empty) == "calibration folder 'empty' holds no .npz files and no .npy files"
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    np.save(mixed / "a.npy", np.zeros((1, 8), np.float32))
    np.savez(mixed / "b.npz", x=np.zeros((1, 8), np.float32))
    assert error(mixed).startswith("calibration folder 'mixed' mixes .npz and .npy files")


def test_pickled_object_arrays_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "evil.npz", x=np.array([{"a": 1}], dtype=object))
    assert error(tmp_path / "evil.npz").startswith("cannot read 'evil.npz': Object arrays cannot be loaded")
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "0.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert error(folder).startswith("cannot read 'npy/0.npy': Object arrays cannot be loaded")


def test_missing_path_and_wrong_kind_of_file(tmp_path: Path) -> None:
    assert error(tmp_path / "nope.npz") == "calibration data 'nope.npz' does not exist"
    (tmp_path / "calib.csv").write_text("1,2\n")
    expected = "calibration data 'calib.csv' is not an .npz file or a folder of .npz/.npy files"
    assert error(tmp_path / "calib.csv") == expected


def test_a_name_too_long_for_the_file_system_is_a_config_error(tmp_path: Path) -> None:
    # Found by tests/fuzz: os.stat raises ENAMETOOLONG instead of answering "no such file".
    assert error(tmp_path / ("x" * 300)) == f"calibration data '{'x' * 80}' cannot be opened (File name too long)"


def test_where_prefixes_every_message(tmp_path: Path) -> None:
    assert error(tmp_path / "nope.npz", where="gpux.yml:6:11").startswith("gpux.yml:6:11: calibration data 'nope.npz'")


def test_load_validation_samples_reads_every_layout_with_the_position(make_project) -> None:
    project = make_project(models.mlp(), "name: demo\nmodel:\n  source: ./model.onnx\nbuild:\n  calibration:\n"
                                         "    data: calib\n")  # fmt: skip
    config = load_config(project / "gpux.yml")
    sig = load_model(config.model_path).signature
    (project / "calib").mkdir()
    np.save(project / "calib" / "b.npy", np.full((1, 8), 2.0))
    np.save(project / "calib" / "a.npy", np.full((1, 8), 1.0))
    [sample], overlap = load_validation_samples(config, sig, 1)  # 2 files, 32 to calibrate: the first, overlapping
    assert overlap is True
    np.testing.assert_array_equal(sample["x"], np.ones((1, 8), np.float32))
    np.save(project / "calib" / "c.npy", np.zeros((1, 7)))
    (project / "calib" / "a.npy").unlink()
    (project / "calib" / "b.npy").unlink()
    with pytest.raises(ConfigError, match=re.escape("gpux.yml:6:11: 'calib/c.npy': 'x' has shape [1, 7]")):
        load_validation_samples(config, sig, 1)


# -- generated samples -------------------------------------------------------------------------


def test_random_samples_are_deterministic_distinct_and_shaped() -> None:
    model = models.int64_text_model()
    shapes = {"input_ids": [2, 6], "attention_mask": [2, 6]}
    first = random_samples(TEXT, shapes, 4, 7, model)
    again = random_samples(TEXT, shapes, 4, 7, model)
    assert len(first) == 4
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    assert not np.array_equal(first[0]["input_ids"], first[1]["input_ids"])
    assert all(s["input_ids"].shape == (2, 6) and s["input_ids"].dtype == np.int64 for s in first)
    assert all(s["input_ids"].max() < 50 for s in first)  # inside the embedding's vocabulary
    assert all((s["attention_mask"] == 1).all() for s in first)


def test_random_samples_never_repeat_the_reference_inputs() -> None:
    model = models.mlp()
    shapes = {"x": [1, 8]}
    reference = generate(MLP, shapes, 0, index_bounds(model))
    samples = random_samples(MLP, shapes, 16, 0, model)
    assert not any(np.array_equal(s["x"], reference["x"]) for s in samples)


def test_resolve_model_shapes_takes_given_shapes_then_defaults() -> None:
    assert resolve_model_shapes(MLP) == {"x": [1, 8]}
    assert resolve_model_shapes(MLP, {"x": [3, 8]}) == {"x": [3, 8]}
    assert resolve_model_shapes(TEXT, defaults=(5, 32)) == {"input_ids": [1, 5], "attention_mask": [1, 5]}
    cnn = signature(models.tiny_cnn(dynamic_spatial=True))
    assert resolve_model_shapes(cnn, defaults=(4, 32)) == {"image": [1, 3, 32, 32]}


def test_a_scalar_input_with_a_sample_axis_gives_0d_arrays_onnx_runtime_takes(tmp_path: Path) -> None:
    # silero-vad's `sr`: stacked as [N], each sample must be a 0-d array, not a NumPy scalar
    # (ONNX Runtime refuses "object of type numpy.float32").
    from gpuxc.ort_session import run_onnxruntime

    data = tmp_path / "cal.npz"
    np.savez(data, scale=np.array([2.0, 3.0], np.float32), x=np.ones((2, 4), np.float32))
    samples = load_samples(data, signature(models.scalar_input()), 2)
    assert [type(s["scale"]) for s in samples] == [np.ndarray, np.ndarray] and samples[1]["scale"].shape == ()
    out = run_onnxruntime(models.scalar_input().SerializeToString(), samples[1])
    assert out["y"].tolist() == [3.0] * 4
