"""gpuxc.project.signature.check_signature: what gpux.yml declares against what the model is."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from fixtures import models
from gpuxc.errors import SignatureMismatch
from gpuxc.project.config_load import load_config
from gpuxc.project.model import load_model
from gpuxc.project.signature import bundle_io, check_signature

CFG = str(Path("project1", "gpux.yml"))  # make_project numbers its folders; one project per test
HEAD = "name: demo\nmodel:\n  source: ./model.onnx\n"  # lines 1-3


def check(project: Path) -> None:
    config = load_config(project / "gpux.yml")
    check_signature(config, load_model(config.model_path).signature)


def mismatch(make_project, text: str, model: onnx.ModelProto | None = None) -> str:
    project = make_project(model or models.mlp(), HEAD + text)
    with pytest.raises(SignatureMismatch) as info:
        check(project)
    return str(info.value)


@pytest.fixture(autouse=True)
def _relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Messages name the config relative to the working directory.
    monkeypatch.chdir(tmp_path)


def test_unknown_input_name_points_at_the_name_with_did_you_mean(make_project) -> None:
    message = mismatch(make_project, "inputs:\n  - name: xx\n    type: float32\n")
    assert message.startswith(f"{CFG}:5:11: "), message
    assert "input 'xx' is not an input of ./model.onnx" in message
    assert "(did you mean 'x'?)" in message
    assert "the model's inputs: x" in message


def test_unknown_input_in_mapping_form_points_at_the_key(make_project) -> None:
    message = mismatch(make_project, "inputs:\n  y:\n    type: float32\n")
    assert message.startswith(f"{CFG}:5:3: "), message


def test_unknown_output_name(make_project) -> None:
    message = mismatch(make_project, "outputs:\n  prob:\n    type: float32\n")
    assert message.startswith(f"{CFG}:5:3: "), message
    assert "output 'prob' is not an output" in message and "(did you mean 'probs'?)" in message


def test_dtype_mismatch_points_at_the_type(make_project) -> None:
    message = mismatch(make_project, "inputs:\n  x:\n    type: int64\n")
    assert message.startswith(f"{CFG}:6:11: "), message
    assert "declared int64, but the model's is float32" in message


def test_rank_mismatch_points_at_the_shape(make_project) -> None:
    message = mismatch(make_project, "inputs:\n  x:\n    shape: [1, 8, 1]\n")
    assert message.startswith(f"{CFG}:6:12: "), message
    assert "rank 3" in message and "rank 2" in message


def test_fixed_dim_mismatch_points_at_the_dim(make_project) -> None:
    message = mismatch(make_project, "inputs:\n  x:\n    shape: [1, 9]\n")
    assert message.startswith(f"{CFG}:6:16: "), message
    assert "dim 1 is declared 9, but the model fixes it to 8" in message


def test_output_fixed_dim_mismatch(make_project) -> None:
    message = mismatch(make_project, "outputs:\n  probs:\n    shape: [-1, 4]\n")
    assert message.startswith(f"{CFG}:6:17: "), message


def test_labels_count_must_match_the_last_dim(make_project) -> None:
    message = mismatch(make_project, "outputs:\n  probs:\n    labels: [a, b]\n")
    assert message.startswith(f"{CFG}:6:13: "), message
    assert "2 labels, but its last dim is 3" in message


def test_labels_matching_the_last_dim_are_accepted(make_project) -> None:
    check(make_project(models.mlp(), HEAD + "outputs:\n  probs:\n    labels: [a, b, c]\n"))


def test_max_length_below_the_fixed_length(make_project) -> None:
    message = mismatch(make_project, "inputs:\n  x:\n    max_length: 4\n")
    assert message.startswith(f"{CFG}:6:17: "), message


def test_partially_declared_inputs_are_an_error(make_project) -> None:
    message = mismatch(make_project, "inputs:\n  input_ids:\n    type: int64\n", model=models.int64_text_model())
    assert message.startswith(f"{CFG}:5:3: "), message
    assert "model input 'attention_mask' is not declared" in message


def test_no_declared_inputs_takes_them_from_the_model(make_project) -> None:
    check(make_project(models.int64_text_model(), HEAD))


def test_declared_fixed_value_may_pin_a_symbolic_dim(make_project) -> None:
    check(make_project(models.mlp(), HEAD + "inputs:\n  x:\n    type: float32\n    shape: [4, 8]\n"))


@pytest.mark.parametrize("dim", ["-1", "null", "batch"])
def test_declared_open_dims_match_anything(make_project, dim: str) -> None:
    check(make_project(models.mlp(batch=2), HEAD + f"inputs:\n  x:\n    shape: [{dim}, 8]\n"))


def test_legacy_initializer_inputs_need_not_be_declared(make_project) -> None:
    check(make_project(models.legacy_initializer_inputs(), HEAD + "inputs:\n  x:\n    shape: [1, 4]\n"))


def test_bundle_io_merges_descriptions_and_labels(make_project) -> None:
    project = make_project(
        models.mlp(),
        HEAD + "inputs:\n  x:\n    description: features\noutputs:\n  probs:\n    labels: [a, b, c]\n",
    )
    config = load_config(project / "gpux.yml")
    sig = load_model(config.model_path).signature
    [x] = bundle_io(config, sig.inputs, "inputs")
    [probs] = bundle_io(config, sig.outputs, "outputs")
    assert (x.name, x.dtype, x.shape, x.description) == ("x", "float32", ["N", 8], "features")
    assert probs.labels == ["a", "b", "c"] and probs.description is None
