"""tensorrt target. CONTRACT tests, not runtime tests: there is no TensorRT or GPU here, so the
builder and the runner adapter run against a recording stand-in of the ``tensorrt`` and
``cuda.bindings.runtime`` modules, and the tests assert the API calls they make (profiles,
shapes, flags, tensor names). The ``gpu``-marked test runs the real path where both exist."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

from fixtures import models
from gpuxc.build.pipeline import compile_project
from gpuxc.errors import ConfigError

FAKE_TENSORRT = '''
"""Recording stand-in for the tensorrt module: every call is appended to CALLS."""
CALLS = []
__version__ = "10.99.0"


def _rec(*args):
    CALLS.append(args)


class Logger:
    WARNING = 2
    def __init__(self, level): _rec("Logger", level)


class NetworkDefinitionCreationFlag:
    STRONGLY_TYPED = 1


class MemoryPoolType:
    WORKSPACE = "WORKSPACE"


class HardwareCompatibilityLevel:
    AMPERE_PLUS = "AMPERE_PLUS"


class TensorIOMode:
    INPUT = "INPUT"
    OUTPUT = "OUTPUT"


class _Profile:
    def set_shape(self, name, mn, opt, mx): _rec("set_shape", name, list(mn), list(opt), list(mx))


class _Cache:
    def serialize(self): return b"TIMING"


class _Config:
    hardware_compatibility_level = None
    def set_memory_pool_limit(self, pool, size): _rec("set_memory_pool_limit", pool, size)
    def add_optimization_profile(self, profile): _rec("add_optimization_profile")
    def create_timing_cache(self, data): _rec("create_timing_cache", bytes(data).decode()); return _Cache()
    def set_timing_cache(self, cache, ignore_mismatch): _rec("set_timing_cache", ignore_mismatch)
    def get_timing_cache(self): return _Cache()


class Builder:
    def __init__(self, logger): _rec("Builder")
    def create_network(self, flags): _rec("create_network", flags); return object()
    def create_builder_config(self): return _Config()
    def create_optimization_profile(self): return _Profile()
    def build_serialized_network(self, network, config):
        _rec("build_serialized_network", config.hardware_compatibility_level); return b"ENGINE"


class OnnxParser:
    num_errors = 0
    def __init__(self, network, logger): pass
    def parse_from_file(self, path): _rec("parse_from_file", path); return True


def nptype(dtype):
    import numpy
    return numpy.float32


class _Engine:
    num_io_tensors = 2
    def get_tensor_name(self, i): return ["image", "probs"][i]
    def get_tensor_mode(self, name): return TensorIOMode.INPUT if name == "image" else TensorIOMode.OUTPUT
    def get_tensor_dtype(self, name): return "float32"
    def create_execution_context(self): return _Context()


class _Context:
    shapes = {}
    def set_input_shape(self, name, shape): _rec("set_input_shape", name, list(shape)); self.shapes[name] = shape
    def get_tensor_shape(self, name): return (self.shapes["image"][0], 5)
    def set_tensor_address(self, name, ptr): _rec("set_tensor_address", name)
    def execute_async_v3(self, stream): _rec("execute_async_v3"); return True


class Runtime:
    def __init__(self, logger): pass
    def deserialize_cuda_engine(self, data): _rec("deserialize_cuda_engine", bytes(data).decode()); return _Engine()
'''

FAKE_CUDART = '''
"""Recording stand-in for cuda.bindings.runtime."""
from tensorrt import CALLS


class _Props:
    name = b"Fake GPU"
    major = 8
    minor = 6


class cudaMemcpyKind:
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


def cudaGetDeviceProperties(i): return (0, _Props())
def cudaGetDeviceCount(): return (0, 1)
def cudaStreamCreate(): return (0, 7)
def cudaMalloc(n): CALLS.append(("cudaMalloc", n)); return (0, 1000 + n)
def cudaMemcpyAsync(dst, src, n, kind, stream): CALLS.append(("cudaMemcpyAsync", n, kind)); return (0,)
def cudaStreamSynchronize(stream): return (0,)
def cudaFree(ptr): CALLS.append(("cudaFree",)); return (0,)
'''


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trt")
    project = root / "proj"
    project.mkdir()
    example = Path(__file__).resolve().parents[3] / "examples" / "image-classifier"
    sys.path.insert(0, str(example))
    try:
        import make_model
    finally:
        sys.path.remove(str(example))
    onnx.save(make_model.build_model(), project / "model.onnx")
    (project / "gpux.yml").write_text(
        "name: trt\nmodel:\n  source: ./model.onnx\nruntime:\n  gpu:\n    memory: 1GiB\n"
        "build:\n  options:\n    tensorrt:\n      hardware_compatibility: ampere_plus\n",
        encoding="utf-8",
    )
    [result] = compile_project(project, ["tensorrt"], root / "dist")
    return result.path


def write_fake_site(site: Path) -> Path:
    """``site`` holding the fake ``tensorrt`` and ``cuda.bindings.runtime`` modules (put it on sys.path)."""
    (site / "tensorrt.py").write_text(textwrap.dedent(FAKE_TENSORRT), encoding="utf-8")
    (site / "cuda" / "bindings").mkdir(parents=True)
    (site / "cuda" / "__init__.py").write_text("", encoding="utf-8")
    (site / "cuda" / "bindings" / "__init__.py").write_text("", encoding="utf-8")
    (site / "cuda" / "bindings" / "runtime.py").write_text(textwrap.dedent(FAKE_CUDART), encoding="utf-8")
    return site


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_site(tmp_path_factory.mktemp("fake-site"))


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / "gpux-bundle.json").read_text())


def test_manifest_says_deferred_with_profiles_and_workspace(bundle: Path) -> None:
    settings = manifest_of(bundle)["artifact"]["settings"]
    assert settings["engine"] == "deferred" and settings["deferred_reason"]
    assert settings["profiles"] == {"image": {"min": [1, 3, 64, 64], "opt": [1, 3, 64, 64], "max": [8, 3, 64, 64]}}
    assert settings["workspace_bytes"] == 2**30
    assert manifest_of(bundle)["verification"]["status"] == "unverified"  # never a verified engine without a GPU


def test_prepared_onnx_is_standard_onnx_verified_on_the_cpu(bundle: Path) -> None:
    model = onnx.load(bundle / "model" / "model.onnx")
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    outputs = manifest_of(bundle)["verification"]["outputs"]
    assert outputs["probs"]["cosine"] > 0.9999


def run_with_fakes(fakes: Path, bundle: Path, code: str, cwd: Path) -> list:
    script = f"import sys; sys.path[:0] = [{str(fakes)!r}, {str(bundle)!r}]\n" + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd,
                          env={"PATH": "", "GPUXC_ENGINE_CACHE": str(cwd / "engines")})  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_contract_builder_calls(fakes: Path, bundle: Path, tmp_path: Path) -> None:
    calls = run_with_fakes(fakes, bundle, """
        import json
        from pathlib import Path
        import tensorrt
        from runner import trt_builder
        settings = json.loads(Path("gpux-bundle.json").read_text())["artifact"]["settings"]
        engine = trt_builder.build_engine(Path("model/model.onnx"), settings, Path("cache/timing.cache"))
        assert engine == b"ENGINE"
        print(json.dumps([list(c) for c in tensorrt.CALLS]))
    """, bundle)  # fmt: skip
    names = [c[0] for c in calls]
    assert ["create_network", 2] in calls  # 1 << STRONGLY_TYPED: precision comes from the graph
    assert ["parse_from_file", "model/model.onnx"] in calls
    assert ["set_memory_pool_limit", "WORKSPACE", 2**30] in calls
    assert ["set_shape", "image", [1, 3, 64, 64], [1, 3, 64, 64], [8, 3, 64, 64]] in calls
    assert names.index("add_optimization_profile") < names.index("build_serialized_network")
    assert ["build_serialized_network", "AMPERE_PLUS"] in calls
    assert "create_timing_cache" in names and (bundle / "cache" / "timing.cache").read_bytes() == b"TIMING"


def test_contract_adapter_builds_once_caches_and_binds_tensors_by_name(
    fakes: Path, bundle: Path, tmp_path: Path
) -> None:
    code = f"""
        import json
        import numpy as np
        import runner, tensorrt
        # The stand-in computes no real numbers: the start-up self-check would (rightly) refuse it.
        rt = runner.load({str(bundle)!r}, self_check="off")
        out = rt.infer({{"image": np.zeros((2, 3, 64, 64), np.float32)}})
        assert out["probs"].shape == (2, 5)
        rt2 = runner.load({str(bundle)!r}, self_check="off")  # second start: the cached engine, no rebuild
        print(json.dumps([list(c) for c in tensorrt.CALLS]))
    """
    calls = run_with_fakes(fakes, bundle, code, tmp_path)
    names = [c[0] for c in calls]
    assert names.count("build_serialized_network") == 1 and names.count("deserialize_cuda_engine") == 2
    assert ["set_input_shape", "image", [2, 3, 64, 64]] in calls
    assert ["set_tensor_address", "image"] in calls and ["set_tensor_address", "probs"] in calls
    assert "execute_async_v3" in names and names.count("cudaFree") == names.count("cudaMalloc")


def test_an_engine_computing_wrong_numbers_never_runs(fakes: Path, bundle: Path, tmp_path: Path) -> None:
    """The stand-in engine loads and runs but its outputs are not the model's: exactly a real engine
    built for another GPU. The bundle was unverified at compile time, so the runner's default
    self-check runs it on the reference inputs and refuses it, naming the numbers."""
    reason = run_with_fakes(fakes, bundle, f"""
        import json
        import runner
        try:
            runner.load({str(bundle)!r})
            print(json.dumps(["loaded"]))
        except runner.api.NoVariant as exc:
            print(json.dumps([str(exc), exc.self_check_failed, exc.skipped[0]["self_check"]["provider"]]))
    """, tmp_path)  # fmt: skip
    assert reason[0].startswith("self-check failed: probs: ") and reason[1] is True and reason[2] == "tensorrt"
    cached = list((tmp_path / "engines").glob("*.engine"))
    assert len(cached) == 1 and "fake-gpu-sm86-trt10.99.0" in cached[0].name


def test_int8_dynamic_is_refused_for_tensorrt(make_project, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="int8-static"):
        compile_project(make_project(models.tiny_cnn(), {"build": {"precision": "int8-dynamic"}}), ["tensorrt"],
                        tmp_path / "dist")  # fmt: skip


@pytest.mark.gpu
def test_engine_builds_and_runs_on_a_gpu(bundle: Path) -> None:
    from gpuxc_tensorrt.target import why_no_tensorrt

    if why_no_tensorrt() is not None:
        pytest.skip(f"needs TensorRT and an NVIDIA GPU: {why_no_tensorrt()}")
    done = subprocess.run([sys.executable, str(bundle), "verify"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
