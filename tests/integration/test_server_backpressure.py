"""Back-pressure and time limits of the generated server: 503 with Retry-After, 504 on the v2 route."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from gpuxc.build.pipeline import compile_project
from tests.integration.conftest import endless_loop_model, running_server, write_project

STEPS_FOREVER = 2**62


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One slot for inferences, each stopped after 2 s: a second request while one runs is refused."""
    root = tmp_path_factory.mktemp("busy")
    config = {"runtime": {"timeout": 2.0}, "serving": {"max_concurrency": 1, "timeout": 10}}
    project = write_project(root / "p", endless_loop_model(), config, name="busy")
    [result] = compile_project(project, ["cpu"], root / "dist")
    with running_server(sys.executable, result.path, root) as url:
        yield url


def v2_body(steps: int) -> dict:
    return {"inputs": [{"name": "steps", "datatype": "INT64", "shape": [], "data": [steps]},
                       {"name": "x", "datatype": "FP32", "shape": [4], "data": [0.0] * 4}]}  # fmt: skip


def test_over_the_concurrency_limit_is_503_with_retry_after(busy_server: str) -> None:
    slow: dict[str, httpx.Response] = {}
    worker = threading.Thread(
        target=lambda: slow.setdefault(
            "r", httpx.post(f"{busy_server}/v2/models/busy/infer", json=v2_body(STEPS_FOREVER), timeout=30)
        )  # fmt: skip
    )
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while True:  # wait until the slow request holds the only slot
            metrics = httpx.get(f"{busy_server}/metrics", headers={"Accept": "application/json"}).json()
            if metrics["in_flight"] == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        refused = httpx.post(f"{busy_server}/v2/models/busy/infer", json=v2_body(1))
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1" and "error" in refused.json()
        gpux = httpx.post(f"{busy_server}/predict", json={"steps": 1, "x": [0.0] * 4})
        assert gpux.status_code == 503 and gpux.json()["error"] == "busy"
    finally:
        worker.join(timeout=30)
    # The slow one ran into runtime.timeout: 504, not 500.
    assert slow["r"].status_code == 504 and slow["r"].json() == {"error": "inference timed out"}


def test_after_the_slot_frees_requests_succeed_again(busy_server: str) -> None:
    reply = httpx.post(f"{busy_server}/v2/models/busy/infer", json=v2_body(3))
    assert reply.status_code == 200
    assert reply.json()["outputs"][0]["data"] == [3.0] * 4
