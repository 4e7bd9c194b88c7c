"""Shared, expensive things for the integration tests: built once per session.

- ``shared_bundle``: one cpu bundle (tiny_cnn with labels) compiled by gpuxc, used read-only by the
  runner, server and venv tests. Tests that modify a bundle copy it first (``bundle_copy``).
- ``bundle_venv``: ONE fresh virtual environment holding only the bundle's requirements.txt
  (no gpuxc), used to prove the bundle is self-contained.

Helpers (plain functions, importable as ``tests.integration.conftest``) run subprocesses with a
guard timeout and compare outputs with ONNX Runtime on the *source* model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import venv
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from fixtures import models

REPO = Path(__file__).resolve().parents[2]
# A guard against a hung child, not a performance threshold: every call here finishes in seconds.
GUARD_S = 300
PIP_GUARD_S = 900
SHARED_LABELS = ["cat", "dog", "bird", "fish"]


@dataclass
class Proc:
    returncode: int
    stdout: str
    stderr: str


def run_cmd(
    args: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = GUARD_S,
    input_text: str | None = None,
) -> Proc:
    """Run a command; a guard timeout fails the test instead of hanging the suite."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    try:
        done = subprocess.run(
            [str(a) for a in args],
            cwd=cwd,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{args[:3]} did not finish within the {timeout}s guard: {exc.stderr!r}")
    return Proc(done.returncode, done.stdout, done.stderr)


def write_project(
    folder: Path, model: onnx.ModelProto, config: dict[str, Any] | None = None, name: str = "demo"
) -> Path:
    """``folder/model.onnx`` + ``folder/gpux.yml`` (``config`` merged over name/model.source)."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    data: dict[str, Any] = {"name": name, "model": {"source": "./model.onnx"}}
    data.update(config or {})
    (folder / "gpux.yml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return folder


def ort_run(model_path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime (CPU, default session options) on ``model_path``: the ground truth."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def error_lines(stderr: str) -> list[str]:
    """stderr without gpuxc's progress lines (``gpuxc: ...``), which precede an error by design."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("gpuxc: ")]


def assert_one_error_line(stderr: str, *, contains: Sequence[str] = ()) -> str:
    """The error is exactly one ``error: ...`` line, with no traceback anywhere."""
    assert "Traceback" not in stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, f"expected one error line, got {lines!r}"
    line = lines[0]
    assert line.startswith("error: "), line
    for text in contains:
        assert text in line, f"{text!r} not in {line!r}"
    return line


def resign(bundle: Path, rel: str) -> None:
    """Update the manifest's size/sha256 of ``rel``: only the numbers are wrong, not integrity."""
    path = bundle / "gpux-bundle.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    data = (bundle / rel).read_bytes()
    [entry] = [f for f in manifest["files"] if f["path"] == rel]
    entry["size"] = len(data)
    entry["sha256"] = hashlib.sha256(data).hexdigest()
    path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def break_weights(bundle: Path, rel: str = "model/model.onnx") -> None:
    """Replace every float weight of the bundle's model with noise and re-sign it: the bundle is
    intact as far as its manifest goes but computes the wrong numbers, as an engine built for
    another device would."""
    path = bundle / rel
    model = onnx.load(path)
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            noise = rng.standard_normal(numpy_helper.to_array(init).shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(noise, init.name))
    onnx.save(model, path)
    resign(bundle, rel)


def endless_loop_model() -> onnx.ModelProto:
    """``y = x + steps``, computed by a Loop of ``steps`` iterations (ONNX Runtime checks the
    terminate flag between iterations). With steps = 2**62 it cannot finish in any test's
    lifetime."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v", "one"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [4]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [4]),
        ],
        initializer=[numpy_helper.from_array(np.array(1.0, np.float32), "one")],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["steps", "", "x"], ["y"], name="loop", body=body)],
        "endless",
        [
            helper.make_tensor_value_info("steps", TensorProto.INT64, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_log(cwd: Path, base: str) -> Path:
    """The file holding the stdout and stderr of the ``running_server`` at ``base``."""
    return cwd / f"server-{base.rsplit(':', 1)[1]}.log"


@contextmanager
def running_server(python: Path | str, bundle: Path, cwd: Path, args: Sequence[str] = (),
                   env: dict[str, str] | None = None, verify: Any = None) -> Iterator[str]:  # fmt: skip
    """``python <bundle> serve [args]`` on a free loopback port; yields the base URL once /health answers
    (``https://`` when ``verify``, an ``ssl.SSLContext`` trusting the server's CA, is given).

    The server is always terminated (killed if it ignores SIGTERM) when the block exits.
    """
    import httpx

    port = free_port()
    log_path = cwd / f"server-{port}.log"
    with log_path.open("w", encoding="utf-8") as log:
        server = subprocess.Popen(
            [str(python), str(bundle), "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env} if env else None,
        )
        try:
            base = f"{'https' if verify is not None else 'http'}://127.0.0.1:{port}"
            deadline = time.monotonic() + GUARD_S  # a guard against a server that never comes up
            while True:
                if server.poll() is not None:
                    pytest.fail(f"server exited with {server.returncode}: {log_path.read_text(encoding='utf-8')}")
                try:
                    if httpx.get(f"{base}/health", timeout=5, verify=verify or True).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"server did not answer /health: {log_path.read_text(encoding='utf-8')}")
                time.sleep(0.2)
            yield base
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@contextmanager
def imported_runner(bundle: Path) -> Iterator[Any]:
    """The bundle's ``runner`` package imported in this process (for FastAPI's TestClient), and
    removed again afterwards with any ``runner`` modules that were there before put back."""
    def drop() -> dict[str, Any]:
        return {k: sys.modules.pop(k) for k in list(sys.modules) if k == "runner" or k.startswith("runner.")}

    saved = drop()
    sys.path.insert(0, str(bundle))
    try:
        import runner
        import runner.server

        yield runner
    finally:
        sys.path.remove(str(bundle))
        drop()
        sys.modules.update(saved)


def venv_python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def make_venv(folder: Path) -> Path:
    """A fresh venv with pip (pip's own cache is reused by the installs)."""
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    return venv_python(folder)


def pip_install(python: Path, *args: str) -> None:
    proc = run_cmd(
        [python, "-m", "pip", "install", "--disable-pip-version-check", "--quiet", *args],
        timeout=PIP_GUARD_S,
    )
    assert proc.returncode == 0, f"pip install {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def shared_config() -> dict[str, Any]:
    return {"version": "2.0.0", "outputs": {"logits": {"labels": SHARED_LABELS}}}


@pytest.fixture(scope="session")
def shared_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_cnn: image float32[N,3,32,32] -> logits float32[N,4] (labelled)."""
    return write_project(
        tmp_path_factory.mktemp("shared") / "project",
        models.tiny_cnn(),
        shared_config(),
        name="shared-cnn",
    )


@pytest.fixture(scope="session")
def shared_bundle(shared_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One compiled, verified cpu bundle for read-only use by many tests."""
    from gpuxc.build.pipeline import compile_project

    [result] = compile_project(shared_project, ["cpu"], tmp_path_factory.mktemp("shared-dist"))
    assert result.verification["status"] == "passed", result.verification
    return result.path


@pytest.fixture
def bundle_copy(shared_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the shared bundle that a test may modify."""
    dest = tmp_path / shared_bundle.name
    shutil.copytree(shared_bundle, dest)
    return dest


@pytest.fixture(scope="session")
def bundle_venv(shared_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Python of ONE fresh venv holding only ``shared_bundle/requirements.txt`` (from PyPI)."""
    python = make_venv(tmp_path_factory.mktemp("bundle-venv") / "venv")
    pip_install(python, "-r", str(shared_bundle / "requirements.txt"))
    return python


@pytest.fixture(scope="session")
def gpuxc_script() -> Path:
    """The ``gpuxc`` console script installed beside the interpreter running the tests."""
    script = Path(sys.executable).parent / ("gpuxc.exe" if os.name == "nt" else "gpuxc")
    if not script.exists():
        pytest.fail(f"no gpuxc console script at {script}: install gpuxc into this environment (pip install -e .)")
    return script
