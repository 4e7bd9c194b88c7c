"""Dynamic batching in the generated server: combined, split back correctly, bad requests kept out."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from fixtures import models
from gpuxc.build.pipeline import compile_project
from tests.integration.conftest import ort_run, running_server, write_project


@pytest.fixture(scope="module")
def batching(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("batch")
    config = {"serving": {"batch_size": 8, "max_queue_delay": 0.05}}
    project = write_project(root / "p", models.tiny_cnn(), config, name="batchy")
    [result] = compile_project(project, ["cpu"], root / "dist")
    with running_server(sys.executable, result.path, root) as url:
        yield url, project / "model.onnx"


def request(rows: int, seed: int) -> dict:
    x = np.random.default_rng(seed).standard_normal((rows, 3, 32, 32)).astype(np.float32)
    return {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


def batch_observations(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics").text
    total = float(re.search(r"^gpuxc_batch_size_sum (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    runs = float(re.search(r"^gpuxc_batch_size_count (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    return total, runs


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(batching: tuple[str, Path]) -> None:
    url, model = batching
    sizes = [1, 2, 1, 3, 1]
    before = batch_observations(url)
    with ThreadPoolExecutor(len(sizes)) as pool:
        replies = list(pool.map(lambda i: httpx.post(f"{url}/v2/models/batchy/infer", json=request(sizes[i], i),
                                                     timeout=30), range(len(sizes))))  # fmt: skip
    for i, reply in enumerate(replies):
        assert reply.status_code == 200, reply.text
        [out] = reply.json()["outputs"]
        x = np.asarray(request(sizes[i], i)["inputs"][0]["data"], np.float32).reshape(sizes[i], 3, 32, 32)
        expected = ort_run(model, {"image": x})["logits"]
        assert out["shape"] == [sizes[i], 4]
        np.testing.assert_allclose(np.asarray(out["data"]).reshape(out["shape"]), expected, rtol=1e-4, atol=1e-5)
    after = batch_observations(url)
    rows, runs = after[0] - before[0], after[1] - before[1]
    assert rows == sum(sizes)
    assert runs < len(sizes)  # fewer model runs than requests: some were combined


def test_a_malformed_request_beside_good_ones_leaves_them_intact(batching: tuple[str, Path]) -> None:
    url, model = batching
    bad = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 31, 32], "data": [0.0] * 2976}]}
    bodies = [request(1, 10), bad, request(2, 11), bad, request(1, 12)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        replies = list(pool.map(lambda b: httpx.post(f"{url}/v2/models/batchy/infer", json=b, timeout=30), bodies))
    assert [r.status_code for r in replies] == [200, 400, 200, 400, 200]
    for body, reply in zip(bodies, replies, strict=True):
        if reply.status_code != 200:
            continue
        x = np.asarray(body["inputs"][0]["data"], np.float32).reshape(body["inputs"][0]["shape"])
        got = np.asarray(reply.json()["outputs"][0]["data"]).reshape(reply.json()["outputs"][0]["shape"])
        np.testing.assert_allclose(got, ort_run(model, {"image": x})["logits"], rtol=1e-4, atol=1e-5)


def test_gpux_predict_goes_through_the_batcher_too(batching: tuple[str, Path]) -> None:
    url, model = batching
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    reply = httpx.post(f"{url}/predict", json={"image": x.tolist()}, timeout=30)
    assert reply.status_code == 200
    np.testing.assert_allclose(np.asarray(reply.json()["logits"]), ort_run(model, {"image": x})["logits"],
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    info = httpx.get(f"{url}/metrics", headers={"Accept": "application/json"}).json()
    assert info["batching"] == {"max_batch_size": 8, "enabled": True}
