"""gpuxc.project.reference: concrete shapes, deterministic inputs, calibration samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.parser
import pytest

from fixtures import models
from gpuxc.errors import ConfigError, ReferenceError_
from gpuxc.ort_session import run_onnxruntime
from gpuxc.project.calibration import load_validation_samples
from gpuxc.project.config import GpuxConfig
from gpuxc.project.config_load import load_config
from gpuxc.project.model import LoadedModel, load_model
from gpuxc.project.reference import DEFAULT_DIM, DEFAULT_SPATIAL, index_bounds, make_inputs, resolve_shapes

HEAD = "name: demo\nmodel:\n  source: ./model.onnx\n"


def load(make_project, model: onnx.ModelProto, extra: str = "") -> tuple[GpuxConfig, LoadedModel]:
    project = make_project(model, HEAD + extra)
    config = load_config(project / "gpux.yml")
    return config, load_model(config.model_path)


# -- shapes ----------------------------------------------------------------------------------


def test_symbolic_batch_defaults_to_runtime_batch_size(make_project) -> None:
    config, loaded = load(make_project, models.mlp(), "runtime:\n  batch_size: 3\n")
    assert resolve_shapes(loaded.signature, config) == {"x": [3, 8]}


def test_default_batch_size_is_one(make_project) -> None:
    config, loaded = load(make_project, models.mlp())
    assert resolve_shapes(loaded.signature, config) == {"x": [1, 8]}


def test_declared_shape_sets_a_symbolic_dim(make_project) -> None:
    config, loaded = load(make_project, models.mlp(), "inputs:\n  x:\n    shape: [5, 8]\nruntime:\n  batch_size: 3\n")
    assert resolve_shapes(loaded.signature, config) == {"x": [5, 8]}


def test_build_shapes_win_over_declared_shape_and_batch_size(make_project) -> None:
    config, loaded = load(
        make_project,
        models.mlp(),
        "inputs:\n  x:\n    shape: [5, 8]\nruntime:\n  batch_size: 3\nbuild:\n  shapes:\n    x: [7, 8]\n",
    )
    assert resolve_shapes(loaded.signature, config) == {"x": [7, 8]}


def test_fixed_model_dims_are_kept(make_project) -> None:
    config, loaded = load(make_project, models.multi_io(), "runtime:\n  batch_size: 4\n")
    assert resolve_shapes(loaded.signature, config) == {"a": [2, 3], "b": [2, 3], "k": [2, 3]}


def test_shared_symbolic_dims_get_one_value(make_project) -> None:
    config, loaded = load(make_project, models.int64_text_model(), "build:\n  shapes:\n    input_ids: [2, 7]\n")
    shapes = resolve_shapes(loaded.signature, config)
    assert shapes == {"input_ids": [2, 7], "attention_mask": [2, 7]}


def test_a_value_given_on_a_later_input_reaches_earlier_inputs_sharing_the_dim(
    make_project,
) -> None:
    # attention_mask comes after input_ids in the graph; both use [batch, seq].
    config, loaded = load(make_project, models.int64_text_model(), "build:\n  shapes:\n    attention_mask: [2, 7]\n")
    assert resolve_shapes(loaded.signature, config) == {
        "input_ids": [2, 7],
        "attention_mask": [2, 7],
    }
    config, loaded = load(
        make_project,
        models.int64_text_model(),
        "inputs:\n  input_ids:\n    shape: [batch, seq]\n  attention_mask:\n    shape: [1, 12]\n",
    )
    assert resolve_shapes(loaded.signature, config) == {
        "input_ids": [1, 12],
        "attention_mask": [1, 12],
    }


def test_unknown_sequence_dim_gets_the_default_or_max_length(make_project) -> None:
    config, loaded = load(make_project, models.int64_text_model())
    assert resolve_shapes(loaded.signature, config)["input_ids"] == [1, DEFAULT_DIM]
    config, loaded = load(
        make_project,
        models.int64_text_model(),
        "inputs:\n  input_ids:\n    max_length: 9\n  attention_mask:\n    type: int64\n",
    )
    assert resolve_shapes(loaded.signature, config) == {
        "input_ids": [1, 9],
        "attention_mask": [1, 9],
    }


def test_rank4_float_input_gets_spatial_defaults(make_project) -> None:
    config, loaded = load(make_project, models.tiny_cnn(dynamic_spatial=True))
    assert resolve_shapes(loaded.signature, config) == {"image": [1, 3, DEFAULT_SPATIAL, DEFAULT_SPATIAL]}


def test_scalar_input_has_an_empty_shape(make_project) -> None:
    config, loaded = load(make_project, models.scalar_input())
    assert resolve_shapes(loaded.signature, config) == {"scale": [], "x": [4]}


# -- generated inputs ------------------------------------------------------------------------


def test_make_inputs_is_deterministic(make_project) -> None:
    config, loaded = load(make_project, models.multi_io())
    first = make_inputs(loaded.signature, config, loaded.proto)
    second = make_inputs(loaded.signature, config, loaded.proto)
    assert first.keys() == second.keys() == {"a", "b", "k"}
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


def test_make_inputs_depends_on_the_seed(make_project) -> None:
    config0, loaded = load(make_project, models.mlp())
    config1, _ = load(make_project, models.mlp(), "build:\n  seed: 1\n")
    x0 = make_inputs(loaded.signature, config0, loaded.proto)["x"]
    x1 = make_inputs(loaded.signature, config1, loaded.proto)["x"]
    assert x0.shape == x1.shape
    assert not np.array_equal(x0, x1)


def test_dtypes_and_shapes_follow_the_signature(make_project) -> None:
    config, loaded = load(make_project, models.multi_io())
    inputs = make_inputs(loaded.signature, config, loaded.proto)
    assert inputs["a"].dtype == np.float32 and inputs["a"].shape == (2, 3)
    assert inputs["k"].dtype == np.int32


def test_scalar_and_bool_inputs_are_arrays_ort_accepts(make_project) -> None:
    config, loaded = load(make_project, models.with_if())
    inputs = make_inputs(loaded.signature, config, loaded.proto)
    assert isinstance(inputs["cond"], np.ndarray) and inputs["cond"].shape == ()
    assert inputs["cond"].dtype == np.bool_
    outputs = run_onnxruntime(loaded.path, inputs)
    assert outputs["y"].shape == (3,)


def test_token_ids_stay_below_the_embedding_vocabulary(make_project) -> None:
    config, loaded = load(make_project, models.int64_text_model(), "build:\n  shapes:\n    input_ids: [8, 64]\n")
    embedding = next(t for t in loaded.proto.graph.initializer if t.name == "embedding")
    vocab = embedding.dims[0]
    assert index_bounds(loaded.proto) == {"input_ids": vocab}
    ids = make_inputs(loaded.signature, config, loaded.proto)["input_ids"]
    assert ids.dtype == np.int64
    assert ids.min() >= 0 and ids.max() < vocab
    # Not clamped into a tiny range either: with 512 draws the ids spread over the vocabulary.
    assert ids.max() >= vocab // 2


def test_attention_mask_is_all_ones(make_project) -> None:
    config, loaded = load(make_project, models.int64_text_model())
    mask = make_inputs(loaded.signature, config, loaded.proto)["attention_mask"]
    assert mask.dtype == np.int64
    np.testing.assert_array_equal(mask, np.ones_like(mask))


def test_token_type_ids_are_zeros(make_project) -> None:
    proto = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        "g (int64[1, 4] token_type_ids) => (int64[1, 4] y) { y = Identity(token_type_ids) }"
    )
    config, loaded = load(make_project, proto)
    ids = make_inputs(loaded.signature, config, loaded.proto)["token_type_ids"]
    np.testing.assert_array_equal(ids, np.zeros((1, 4), dtype=np.int64))


def test_index_bounds_follow_shape_only_ops(make_project) -> None:
    proto = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        "g (int32[2, 3] ids) => (float[2, 3, 4] y)\n"
        "<float[10, 4] table = {" + ", ".join(["0.5"] * 40) + "}>\n"
        "{ ids64 = Cast<to = 7>(ids)\n  y = Gather<axis = 0>(table, ids64) }"
    )
    assert index_bounds(proto) == {"ids": 10}


# -- calibration samples ---------------------------------------------------------------------


def calibration_project(make_project, data: str, samples: int = 32) -> tuple[GpuxConfig, LoadedModel]:
    return load(make_project, models.mlp(), f"build:\n  calibration:\n    data: {data}\n    samples: {samples}\n")


def load_calibration_sample(config: GpuxConfig, signature: Any) -> dict[str, np.ndarray]:
    """The reference input drawn from calibration data (fewer samples than calibrate: the first)."""
    return load_validation_samples(config, signature, 1)[0][0]


def test_validation_samples_are_the_ones_after_the_calibration_samples(make_project) -> None:
    samples = np.arange(6 * 2 * 8, dtype=np.float32).reshape(6, 2, 8)
    config, loaded = calibration_project(make_project, "calib.npz", samples=4)
    np.savez(config.project_dir / "calib.npz", x=samples)
    validation, overlap = load_validation_samples(config, loaded.signature, 5)
    assert overlap is False and len(validation) == 2  # samples 4 and 5: never seen by the quantizer
    np.testing.assert_array_equal(validation[0]["x"], samples[4])
    np.testing.assert_array_equal(validation[1]["x"], samples[5])


def test_data_with_no_sample_beyond_the_calibration_ones_overlaps_and_says_so(make_project) -> None:
    samples = np.arange(3 * 2 * 8, dtype=np.float32).reshape(3, 2, 8)
    config, loaded = calibration_project(make_project, "calib.npz", samples=4)
    np.savez(config.project_dir / "calib.npz", x=samples)
    validation, overlap = load_validation_samples(config, loaded.signature, 2)
    assert overlap is True and len(validation) == 2
    np.testing.assert_array_equal(validation[0]["x"], samples[0])


def test_calibration_npz_with_a_leading_sample_axis(make_project, tmp_path: Path) -> None:
    samples = np.random.default_rng(0).standard_normal((5, 2, 8))  # float64 on purpose
    config, loaded = calibration_project(make_project, "calib.npz")
    np.savez(config.project_dir / "calib.npz", x=samples)
    sample = load_calibration_sample(config, loaded.signature)
    assert sample["x"].dtype == np.float32
    np.testing.assert_array_equal(sample["x"], samples[0].astype(np.float32))


def test_calibration_npz_holding_one_sample(make_project) -> None:
    single = np.full((2, 8), 0.25, dtype=np.float32)
    config, loaded = calibration_project(make_project, "calib.npz")
    np.savez(config.project_dir / "calib.npz", x=single)
    np.testing.assert_array_equal(load_calibration_sample(config, loaded.signature)["x"], single)


def test_calibration_folder_uses_the_first_file_by_name(make_project) -> None:
    config, loaded = calibration_project(make_project, "calib")
    folder = config.project_dir / "calib"
    folder.mkdir()
    np.savez(folder / "b.npz", x=np.full((1, 8), 2.0, dtype=np.float32))
    np.savez(folder / "a.npz", x=np.full((1, 8), 1.0, dtype=np.float32))
    (folder / "notes.txt").write_text("ignored")
    np.testing.assert_array_equal(load_calibration_sample(config, loaded.signature)["x"], np.ones((1, 8), np.float32))


def test_calibration_missing_array_is_a_config_error(make_project) -> None:
    config, loaded = calibration_project(make_project, "calib.npz")
    np.savez(config.project_dir / "calib.npz", y=np.zeros((1, 8)))
    with pytest.raises(ConfigError, match="no array named 'x'") as info:
        load_calibration_sample(config, loaded.signature)
    assert ":6:11: " in str(info.value)  # the position of build.calibration.data


def test_calibration_rank_mismatch_is_a_config_error(make_project) -> None:
    config, loaded = calibration_project(make_project, "calib.npz")
    np.savez(config.project_dir / "calib.npz", x=np.zeros((2, 3, 4, 8)))
    with pytest.raises(ConfigError, match="rank 4"):
        load_calibration_sample(config, loaded.signature)


def test_calibration_empty_folder_and_wrong_file_are_config_errors(make_project) -> None:
    config, loaded = calibration_project(make_project, "calib")
    (config.project_dir / "calib").mkdir()
    with pytest.raises(ConfigError, match="no .npz files"):
        load_calibration_sample(config, loaded.signature)
    config, loaded = calibration_project(make_project, "calib.csv")
    (config.project_dir / "calib.csv").write_text("1,2,3\n")
    with pytest.raises(ConfigError, match="not an .npz file"):
        load_calibration_sample(config, loaded.signature)


def test_calibration_refuses_pickled_arrays(make_project) -> None:
    config, loaded = calibration_project(make_project, "calib.npz")
    np.savez(config.project_dir / "calib.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ConfigError, match="cannot read"):
        load_calibration_sample(config, loaded.signature)


# -- running the source model ----------------------------------------------------------------


def test_run_onnxruntime_returns_outputs_by_name(make_project) -> None:
    config, loaded = load(make_project, models.multi_io())
    inputs = make_inputs(loaded.signature, config, loaded.proto)
    outputs = run_onnxruntime(loaded.path, inputs)
    assert list(outputs) == ["sum", "prod", "argmax"]
    np.testing.assert_allclose(outputs["sum"], inputs["a"] + inputs["b"], rtol=1e-6)


def test_run_onnxruntime_failure_is_a_reference_error_with_a_hint(make_project) -> None:
    config, loaded = load(make_project, models.mlp())
    with pytest.raises(ReferenceError_) as info:
        run_onnxruntime(loaded.path, {"x": np.zeros((1, 5), np.float32)})
    assert "x[1, 5]" in info.value.message
    assert info.value.hint is not None and "build.shapes" in info.value.hint


def test_generated_pixels_use_the_whole_uint8_range() -> None:
    """Image preprocessing's uint8 input [N, H, W, C] is drawn from 0..255 (a near-black 0..3 image
    would verify nothing about normalisation); other uint8 inputs stay small ids."""
    from gpuxc.project.reference import generate

    sig = models.signature(("image", "uint8", [1, 32, 32, 3]), ("codes", "uint8", [1, 64]))
    feeds = generate(sig, {"image": [1, 32, 32, 3], "codes": [1, 64]}, 0, {})
    assert feeds["image"].max() > 200 and feeds["image"].min() < 50
    assert feeds["codes"].max() <= 4
