"""``gpuxc init``: the gpux.yml it writes, and its ``preprocessing`` block for image and text models."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import yaml
from onnx import TensorProto, helper
from typer.testing import CliRunner

from fixtures import has_module, models
from gpuxc.project.config_load import load_config
from gpuxc.project.model import describe
from gpuxc.project.preprocessing import ImagePreprocessing, TextPreprocessing, resolve_preprocessing
from gpuxc.project.scaffold import preprocessing_block, write_config


def project(folder: Path, model: onnx.ModelProto) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return models.save(model, folder / "model.onnx")


def signature(model: onnx.ModelProto):  # type: ignore[no-untyped-def]
    return describe(model, sha256="", size_bytes=0, external=[])


def image_model(name: str = "pixel_values", shape: list[int | str] | None = None,
                extra: list[onnx.ValueInfoProto] | None = None) -> onnx.ModelProto:  # fmt: skip
    """``name`` float32 image -> ReduceMean over the spatial dims: any layout, any size."""
    shape = shape or ["N", 3, 224, 224]
    node = helper.make_node("ReduceMean", [name], ["out"], axes=[2, 3], keepdims=0)
    graph = helper.make_graph([node], "img", [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape),
                                              *(extra or [])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["d0", "d1"])])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def uncommented(text: str) -> str:
    """The file with its commented-out preprocessing block switched on (what a user does)."""
    # split("\n"), not splitlines(): a name may hold U+2028, which YAML keeps inside a quoted scalar.
    return "\n".join(line[2:] if line.startswith(("# preprocessing:", "#   ")) else line for line in text.split("\n"))


def test_an_image_model_gets_a_block_read_off_the_model_commented_out(tmp_path: Path) -> None:
    written, _ = write_config(project(tmp_path, models.tiny_cnn()))  # image float32[N, 3, 32, 32]
    text = written.read_text(encoding="utf-8")
    assert "Check normalize against how the model was trained first" in text
    assert load_config(written).preprocessing.kind is None  # as written: tensors in (normalize is a guess)
    written.write_text(uncommented(text), encoding="utf-8")
    config = load_config(written)
    pre = config.preprocessing
    assert (pre.kind, pre.input, pre.resize, pre.normalize) == ("image", "image", [32, 32], "imagenet")
    record = resolve_preprocessing(config, signature(models.tiny_cnn()))
    assert isinstance(record, ImagePreprocessing)
    assert (record.input, record.feeds, record.size, record.layout) == ("image", "image", [32, 32], "nchw")


def test_an_image_model_of_any_size_gets_no_resize(tmp_path: Path) -> None:
    written, _ = write_config(project(tmp_path, image_model(shape=["N", "H", "W", 1])))
    assert "takes any height and width" in written.read_text(encoding="utf-8")
    written.write_text(uncommented(written.read_text(encoding="utf-8")), encoding="utf-8")
    config = load_config(written)
    assert (config.preprocessing.resize, config.preprocessing.normalize) == (None, "0-1")  # gray
    record = resolve_preprocessing(config, signature(image_model(shape=["N", "H", "W", 1])))
    assert isinstance(record, ImagePreprocessing) and (record.layout, record.channels) == ("nhwc", "gray")


def test_the_uint8_input_name_avoids_the_models_other_inputs(tmp_path: Path) -> None:
    extra = [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])]
    model = image_model(extra=extra)
    written = write_config(project(tmp_path, model))[0]
    written.write_text(uncommented(written.read_text(encoding="utf-8")), encoding="utf-8")
    config = load_config(written)
    assert config.preprocessing.image_input == "pixels"
    record = resolve_preprocessing(config, signature(model))
    assert isinstance(record, ImagePreprocessing) and (record.input, record.feeds) == ("pixels", "pixel_values")


def test_a_text_model_gets_the_block_commented_out_until_there_is_a_tokenizer(tmp_path: Path) -> None:
    written, note = write_config(project(tmp_path, models.int64_text_model()))
    assert note == "preprocessing (commented out): save the model's tokenizer.json beside it to send text"
    text = written.read_text(encoding="utf-8")
    assert "# preprocessing:\n#   tokenizer: tokenizer.json\n#   max_length: 512\n" in text
    assert "gpuxc never downloads" in text
    assert load_config(written).preprocessing.kind is None  # loads (and compiles) as written: tensors in
    if not has_module("tokenizers"):
        pytest.skip("the switched-on block needs the tokenizers package")
    from fixtures.text_models import write_tokenizer

    write_tokenizer(tmp_path / "tokenizer.json")
    written.write_text(uncommented(text), encoding="utf-8")
    config = load_config(written)
    record = resolve_preprocessing(config, signature(models.int64_text_model()))
    assert isinstance(record, TextPreprocessing)
    assert (record.ids, record.mask, record.max_length) == ("input_ids", "attention_mask", 512)


def test_a_fixed_sequence_length_is_the_max_length_written(tmp_path: Path) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(models.int64_text_model())
    for value in model.graph.input:
        value.type.tensor_type.shape.dim[0].dim_value = 1
        value.type.tensor_type.shape.dim[1].dim_value = 128
    assert "#   max_length: 128\n" in preprocessing_block(signature(model))


@pytest.mark.parametrize(
    "model",
    [
        models.mlp(),  # float rank 2: neither kind
        models.multi_io(),
        image_model(extra=[helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 8])]),  # both kinds
        image_model(extra=[helper.make_tensor_value_info("second", TensorProto.FLOAT, [1, 3, 8, 8])]),  # two images
    ],
)
def test_models_without_one_clear_kind_get_no_block(tmp_path: Path, model: onnx.ModelProto) -> None:
    assert preprocessing_block(signature(model)) == ""
    written, note = write_config(project(tmp_path, model))
    assert "preprocessing" not in written.read_text(encoding="utf-8") and note == ""


HOSTILE = "x\n# evil: 1\npreprocessing: {tokenizer: /etc/passwd} #\u2028!!python/object:os.system"


def test_a_hostile_input_name_stays_yaml_data(tmp_path: Path) -> None:
    model = image_model(name=HOSTILE)
    written, _ = write_config(project(tmp_path, model))
    text = written.read_text(encoding="utf-8")
    assert "\n# evil" not in text and "\npreprocessing: {" not in text
    data = yaml.safe_load(text)
    assert set(data) == {"name", "version", "description", "model", "inputs", "outputs", "runtime", "serving",
                         "build"}  # fmt: skip  (the block is a comment, and the name cannot end it)
    switched_on = uncommented(text)
    assert "\n# evil" not in switched_on and "\npreprocessing: {" not in switched_on
    written.write_text(switched_on, encoding="utf-8")
    config = load_config(written)
    assert config.preprocessing.input == HOSTILE and config.preprocessing.tokenizer is None
    assert [t.name for t in config.inputs] == [HOSTILE]
    record = resolve_preprocessing(config, signature(model))
    assert isinstance(record, ImagePreprocessing) and record.feeds == HOSTILE


def test_gpuxc_init_writes_the_block(tmp_path: Path) -> None:
    from gpuxc.cli import app

    model = project(tmp_path, models.tiny_cnn())
    done = CliRunner().invoke(app, ["init", str(model), "--out", str(tmp_path / "gpux.yml")])
    assert done.exit_code == 0, done.output
    assert "(preprocessing (commented out): check normalize, then uncomment it to send images)" in done.output
    assert load_config(tmp_path / "gpux.yml").preprocessing.kind is None


def test_the_image_block_compiles_once_switched_on(tmp_path: Path) -> None:
    import json

    from gpuxc.build.pipeline import compile_project

    written, _ = write_config(project(tmp_path / "project", models.tiny_cnn()))
    written.write_text(uncommented(written.read_text(encoding="utf-8")), encoding="utf-8")  # nothing else edited
    [result] = compile_project(tmp_path / "project", ["cpu"], tmp_path / "dist", use_cache=False)
    doc = json.loads((result.path / "gpux-bundle.json").read_text(encoding="utf-8"))
    assert doc["verification"]["status"] == "passed"
    assert [(i["name"], i["dtype"]) for i in doc["inputs"]] == [("image", "uint8")]
    assert doc["preprocessing"]["kind"] == "image" and doc["preprocessing"]["size"] == [32, 32]
