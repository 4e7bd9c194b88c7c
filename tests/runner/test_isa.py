"""CPU extensions: read from a (faked) /proc/cpuinfo by the runner's isa.py, recorded by gpuxc/host.py,
and a bundle specialised for one the deployment CPU lacks says so once, on stderr and in /info."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fixtures import models
from gpuxc.build.pipeline import compile_project
from gpuxc.bundle.runner_source import runner_module
from gpuxc.host import host_isa, physical_cores
from tests.integration.conftest import write_project

isa = runner_module("isa")

SAPPHIRE = "fpu sse avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8 amx_tile"
OLD_XEON = "fpu sse avx2 avx512f"


def cpuinfo(tmp_path: Path, flags: str, cores: int = 2, key: str = "flags") -> Path:
    blocks = [f"processor\t: {i}\nphysical id\t: 0\ncore id\t\t: {i // 2}\n{key}\t\t: {flags}\n" for i in range(cores)]
    path = tmp_path / "cpuinfo"
    path.write_text("\n".join(blocks) + "\n", encoding="utf-8")
    return path


def test_known_extensions_are_read_from_cpuinfo(tmp_path: Path) -> None:
    assert isa.host_isa(str(cpuinfo(tmp_path, SAPPHIRE))) == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16",
                                                               "amx_bf16", "amx_int8"]  # fmt: skip
    arm = cpuinfo(tmp_path, "fp asimd asimddp bf16 i8mm", key="Features")
    assert isa.host_isa(str(arm)) == ["asimddp", "bf16", "i8mm"]
    assert isa.host_isa(str(tmp_path / "missing")) is None


def test_a_missing_extension_is_one_line_and_openvino_says_it_falls_back(tmp_path: Path) -> None:
    old = str(cpuinfo(tmp_path, OLD_XEON))
    [line] = isa.isa_warnings(["BF16"], "onnxruntime/runtime.py", old)
    assert line == ("this bundle was specialised for BF16 on the build host; this CPU lacks "
                    "avx512_bf16/amx_bf16: expect it slower")  # fmt: skip
    [ov] = isa.isa_warnings(["BF16"], "openvino/runtime.py", old)
    assert ov.startswith(line) and "OpenVINO falls back" in ov
    assert isa.isa_warnings(["BF16", "INT8"], "openvino/runtime.py", str(cpuinfo(tmp_path, SAPPHIRE))) == []
    assert isa.isa_warnings([], "openvino/runtime.py", old) == []


def test_gpuxc_records_the_host_and_counts_physical_cores(tmp_path: Path) -> None:
    found = host_isa()
    assert found is None or set(found) <= set(isa.KNOWN)
    assert physical_cores(str(cpuinfo(tmp_path, OLD_XEON, cores=4))) == 2  # two hyperthreads per core


SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import runner
    first = runner.load()
    second = runner.load()  # said once per process, not per runtime
    print(json.dumps({k: first.get_model_info()[k] for k in ("warnings", "requires_isa", "build_host_isa")}))
    """
)


@pytest.mark.parametrize(("flags", "warned"), [(OLD_XEON, True), (SAPPHIRE, False)])
def test_the_runner_warns_once_on_a_cpu_without_the_required_extension(tmp_path: Path, flags: str,
                                                                         warned: bool) -> None:  # fmt: skip
    project = write_project(tmp_path / "p", models.mlp(batch=1), name="mlp")
    [result] = compile_project(project, ["cpu"], tmp_path / "dist", use_cache=False)
    manifest_path = result.path / "gpux-bundle.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["artifact"]["settings"]["requires_isa"] = ["BF16"]  # as a bf16-hint variant records it
    manifest_path.write_text(json.dumps(manifest))
    env = {"GPUXC_CPUINFO": str(cpuinfo(tmp_path, flags)), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(result.path)], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["requires_isa"] == ["BF16"] and info["build_host_isa"] == manifest["host"]["isa"]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    if warned:
        assert lines == ["warning: this bundle was specialised for BF16 on the build host; this CPU lacks "
                         "avx512_bf16/amx_bf16: expect it slower"]  # fmt: skip
        assert info["warnings"] == [lines[0].removeprefix("warning: ")]
    else:
        assert lines == [] and info["warnings"] == []
