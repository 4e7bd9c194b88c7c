"""--optimize auto's runtime-settings tuning (gpuxc/build/search.py: tune_runtime), on measured latencies.

The latencies are given (``interleaved_ms`` replaced), so the rule is tested, not this host's timing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpuxc.build import search
from gpuxc.build.candidate import Candidate
from gpuxc.targets import Artifact, Target, Variant

FEEDS = {"x": np.zeros(1, np.float32)}


class FakeTarget(Target[Any]):
    name = "fake"

    def __init__(self, trials: list[dict[str, Any]]) -> None:
        self.trials = trials
        self.timed: list[dict[str, Any]] = []

    def tuning_candidates(self, artifact: Artifact) -> list[dict[str, Any]]:
        return self.trials

    def timer(self, bundle_dir: Path, artifact: Artifact) -> Callable[[dict[str, np.ndarray]], Any]:
        self.timed.append(dict(artifact.settings))
        return lambda feeds: None


def chosen(settings: dict[str, Any] | None = None) -> Candidate:
    variant = Variant("fp32", "fp32", dict(settings or {}))
    artifact = Artifact("model/model.onnx", "onnx", settings={"intra_op_threads": 0, "execution_mode": "sequential"})
    return Candidate(variant, Path("."), status="passed", artifact=artifact)


@pytest.fixture
def latencies(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    measured: dict[str, float] = {}
    monkeypatch.setattr(search, "interleaved_ms", lambda fns, feeds: {name: measured[name] for name in fns})
    return measured


def test_a_setting_faster_by_more_than_the_gain_is_recorded_and_applied(latencies: dict[str, float]) -> None:
    latencies.update({"as built": 1.0, "intra_op_threads=1": 0.7, "allow_spinning=False": 0.8})
    target = FakeTarget([{"intra_op_threads": 1}, {"allow_spinning": False}])
    c = chosen()
    search.tune_runtime(target, c, FEEDS, lambda m: None)
    assert c.artifact is not None and c.artifact.settings["intra_op_threads"] == 1
    assert "allow_spinning" not in c.artifact.settings
    assert c.variant.settings["runtime"] == {"intra_op_threads": 1}
    # each trial was timed with its settings merged over the artifact's
    assert target.timed[1:] == [{"intra_op_threads": 1, "execution_mode": "sequential"},
                                {"intra_op_threads": 0, "execution_mode": "sequential", "allow_spinning": False}]


@pytest.mark.parametrize("best", [1.0, 1.0 * (1 - search.AUTO_MIN_GAIN / 2), 1.3])
def test_within_noise_or_slower_keeps_the_settings_as_built(latencies: dict[str, float], best: float) -> None:
    latencies.update({"as built": 1.0, "intra_op_threads=1": best})
    c = chosen()
    search.tune_runtime(FakeTarget([{"intra_op_threads": 1}]), c, FEEDS, lambda m: None)
    assert c.artifact is not None and c.artifact.settings == {"intra_op_threads": 0, "execution_mode": "sequential"}
    assert c.variant.settings["runtime"] == {}  # tuned: a replay rebuilds the same artifact, untuned


def test_a_variant_carrying_runtime_settings_is_not_tuned_again(latencies: dict[str, float]) -> None:
    target = FakeTarget([{"intra_op_threads": 1}])
    c = chosen({"runtime": {"intra_op_threads": 1}})
    search.tune_runtime(target, c, FEEDS, lambda m: None)
    assert target.timed == [] and c.variant.settings == {"runtime": {"intra_op_threads": 1}}


def test_nothing_to_try_leaves_the_variant_alone(latencies: dict[str, float]) -> None:
    target = FakeTarget([])
    c = chosen()
    search.tune_runtime(target, c, FEEDS, lambda m: None)
    assert target.timed == [] and c.variant.settings == {}


def test_an_unverified_choice_is_not_tuned(latencies: dict[str, float]) -> None:
    target = FakeTarget([{"intra_op_threads": 1}])
    c = chosen()
    c.status = "unverified"
    search.tune_runtime(target, c, FEEDS, lambda m: None)
    assert target.timed == []


def test_a_setting_the_runtime_refuses_is_a_trial_lost(latencies: dict[str, float]) -> None:
    class Refusing(FakeTarget):
        def timer(self, bundle_dir: Path, artifact: Artifact) -> Callable[[dict[str, np.ndarray]], Any]:
            if artifact.settings.get("num_streams"):
                raise RuntimeError("NUM_STREAMS: unsupported value\nmore")
            return super().timer(bundle_dir, artifact)

    latencies.update({"as built": 1.0, "intra_op_threads=1": 0.5})
    said: list[str] = []
    c = chosen()
    search.tune_runtime(Refusing([{"num_streams": 9}, {"intra_op_threads": 1}]), c, FEEDS, said.append)
    assert c.variant.settings["runtime"] == {"intra_op_threads": 1}
    assert "runtime settings num_streams=9 not tried: NUM_STREAMS: unsupported value" in said
