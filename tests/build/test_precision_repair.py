"""Layer sensitivity and precision repair: a lossy variant that misses tolerance is rebuilt with its
most sensitive nodes kept in float (gpuxc/build/sensitivity.py, gpuxc/build/repair.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fixtures import models
from gpuxc.build import repair as repair_module
from gpuxc.build.candidate import keep_float
from gpuxc.build.pipeline import compile_project
from gpuxc.build.sensitivity import rank_nodes
from gpuxc.errors import VerificationFailed
from gpuxc.passes import PassContext, PassManager, PassSpec
from gpuxc.plugin import get_registry
from tests.integration.conftest import write_project


def calibrated_project(folder: Path, optimize: str = "fixed") -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", x=rng.standard_normal((16, 1, 64)).astype(np.float32))
    build = {"precision": "int8-static", "optimize": optimize, "calibration": {"data": "./calib.npz", "samples": 8}}
    return write_project(folder, models.outlier_mlp(), {"build": build}, name="outlier")


def manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "gpux-bundle.json").read_text(encoding="utf-8"))


def test_keep_float_names_nodes_in_each_lossy_pass_parameter() -> None:
    specs = [PassSpec("ort-optimize", {"level": "basic"}), PassSpec("quantize-static", {"nodes_to_exclude": ["a"]}),
             PassSpec("fp16", {})]  # fmt: skip
    kept = keep_float(specs, ["b", "a"])
    assert kept[0].params == {"level": "basic"}
    assert kept[1].params["nodes_to_exclude"] == ["a", "b"] and kept[2].params["node_block_list"] == ["b", "a"]
    assert specs[1].params["nodes_to_exclude"] == ["a"]  # the plan itself is not changed
    assert keep_float(specs, []) == specs


def test_the_node_that_loses_the_accuracy_ranks_first(tmp_path: Path) -> None:
    source = models.outlier_mlp()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((8, 1, 64)).astype(np.float32))
    ctx = PassContext(workdir=tmp_path, target="cpu", model_dir=tmp_path, project_dir=tmp_path)
    lossy, _ = PassManager(get_registry()).run(source, [PassSpec("quantize-static", {"data": "calib.npz"})], ctx)
    feeds = [{"x": rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(3)]
    ranking = rank_nodes(source, lossy, feeds)
    assert [s.node for s in ranking] == ["mm3", "mm1", "mm2"]
    assert ranking[0].contribution > 0.5 and all(s.contribution < 0.05 for s in ranking[1:])
    # mm2 inherits mm1's damage: its own contribution is its error minus what its input carried.
    mm2 = ranking[2]
    assert mm2.contribution < mm2.error


def test_a_fixed_int8_build_that_misses_tolerance_ships_repaired(tmp_path: Path) -> None:
    [result] = compile_project(calibrated_project(tmp_path / "p"), ["cpu"], tmp_path / "dist")
    assert result.variant == "int8-static+keep1" and result.verification["status"] == "passed"
    build = manifest(result.path)["build"]
    [quantize] = [p for p in build["passes"] if p["name"] == "quantize-static"]
    assert quantize["params"]["nodes_to_exclude"] == ["mm3"]  # replayable: the pass parameters say it
    # 16 samples, 8 to calibrate: verification ran on the other 8, which the quantizer never saw.
    assert manifest(result.path)["reference"]["calibration_overlap"] is False
    failed, repaired = build["candidates"]
    assert failed["status"] == "failed" and failed["sensitive_nodes"][0]["node"] == "mm3"
    assert repaired["status"] == "passed" and repaired["kept_float"] == ["mm3"]
    # The per-variant summary, read off the shipped graph: mm3 in float, the others behind Q/DQ.
    assert repaired["layer_precisions"]["int8"] >= 2 and repaired["layer_precisions"]["fp32"] >= 1


def test_auto_times_the_repaired_variant_beside_the_others(tmp_path: Path) -> None:
    [result] = compile_project(calibrated_project(tmp_path / "p", optimize="auto"), ["cpu"], tmp_path / "dist")
    names = {c["name"]: c for c in manifest(result.path)["build"]["candidates"]}
    assert names["int8-static"]["status"] == "failed"
    assert names["int8-static+keep1"]["status"] == "passed" and names["int8-static+keep1"]["latency_ms"] is not None


def test_without_a_repair_budget_the_build_fails_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repair_module, "MAX_BUILDS", 0)
    with pytest.raises(VerificationFailed, match="int8-static output differs from the source model"):
        compile_project(calibrated_project(tmp_path / "p"), ["cpu"], tmp_path / "dist")
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_a_repair_that_does_not_pass_says_what_it_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One build allowed, and a ranking that puts a harmless node first: the repair cannot pass.
    real_rank = repair_module.rank_nodes
    monkeypatch.setattr(repair_module, "MAX_BUILDS", 1)
    monkeypatch.setattr(repair_module, "rank_nodes", lambda *a: sorted(real_rank(*a), key=lambda s: s.node))
    with pytest.raises(VerificationFailed) as info:
        compile_project(calibrated_project(tmp_path / "p"), ["cpu"], tmp_path / "dist")
    assert (info.value.hint or "").startswith(
        "keeping up to the 1 most sensitive of 3 ranked nodes in float (1 build(s)) did not pass either"
    )


def test_a_repair_out_of_time_stops_and_auto_ships_the_best_variant_that_passed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    # Ranked by name, keeping mm1 does not help; with no time left after that first build the repair
    # stops there, auto ships the best passing candidate and the record says why the search ended.
    real_rank = repair_module.rank_nodes
    monkeypatch.setattr(repair_module, "MAX_SECONDS", 0.0)
    monkeypatch.setattr(repair_module, "rank_nodes", lambda *a: sorted(real_rank(*a), key=lambda s: s.node))
    [result] = compile_project(calibrated_project(tmp_path / "p", optimize="auto"), ["cpu"], tmp_path / "dist")
    assert result.verification["status"] == "passed" and "+keep" not in result.variant
    names = {c["name"]: c for c in manifest(result.path)["build"]["candidates"]}
    assert not [n for n in names if "+keep" in n]  # no repaired variant passed in the time given
    note = names["int8-static"]["repair"]
    assert note == ("keeping up to the 1 most sensitive of 3 ranked nodes in float (1 build(s)) did not pass "
                    "either; the repair's time budget (0 s) ran out")


def test_keeping_every_node_is_never_shipped_as_a_lossy_variant(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    # Ranked by name, mm3 comes last: keeping all three leaves the quantizer nothing to do, and that
    # fp32 model must not ship as "int8-static+keep3".
    real_rank = repair_module.rank_nodes
    monkeypatch.setattr(repair_module, "rank_nodes", lambda *a: sorted(real_rank(*a), key=lambda s: s.node))
    with pytest.raises(VerificationFailed) as info:
        compile_project(calibrated_project(tmp_path / "p"), ["cpu"], tmp_path / "dist")
    assert "keeping up to the 3 most sensitive of 3 ranked nodes in float (3 build(s))" in (info.value.hint or "")


def test_int8_dynamic_is_repaired_too_and_auto_says_what_it_could_not_try(tmp_path: Path) -> None:
    # No calibration data: auto tries fp32 and int8-dynamic; dynamic quantization renames the
    # MatMuls it replaces, and the ranking still finds mm3 by its output tensor.
    project = write_project(tmp_path / "p", models.outlier_mlp(), {"build": {"optimize": "auto"}}, name="outlier")
    [result] = compile_project(project, ["cpu"], tmp_path / "dist")
    names = {c["name"]: c for c in manifest(result.path)["build"]["candidates"]}
    assert names["int8-dynamic"]["status"] == "failed"
    assert names["int8-dynamic"]["sensitive_nodes"][0]["node"] == "mm3"
    assert names["int8-dynamic+keep1"]["status"] == "passed" and names["int8-dynamic+keep1"]["kept_float"] == ["mm3"]
    assert names["int8-static"]["status"] == "not tried"
    assert names["int8-static"]["reason"].startswith("no build.calibration.data")
