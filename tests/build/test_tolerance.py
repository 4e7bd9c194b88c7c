"""The verification gate per precision: defaults by the numerics a variant computes in, then build.tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fixtures import models
from gpuxc.build.verify import tolerance_for
from gpuxc.bundle.compare import compare
from gpuxc.project.config_load import load_config


def test_bf16_compute_is_judged_by_overall_agreement_like_int8(make_project) -> None:
    config = load_config(Path(make_project(models.mlp(), {})) / "gpux.yml")
    fp16, bf16 = tolerance_for(config, "fp16"), tolerance_for(config, "fp16", hint="bf16")
    assert bf16 == tolerance_for(config, "int8-static")
    assert bf16["min_cosine"] == fp16["min_cosine"] == 0.999  # the same overall bar
    # A detector's box coordinates in pixels under bf16: every value off by ~1.5% (bf16 keeps 8
    # mantissa bits), cosine 0.9999: fp16's 1% elementwise gate refuses it, bf16's takes it.
    rng = np.random.default_rng(0)
    boxes = rng.uniform(10, 1000, (1, 4, 2000)).astype(np.float32)
    got = {"boxes": boxes * np.float32(1.015)}
    assert compare({"boxes": boxes}, got, fp16)["status"] == "failed"
    assert compare({"boxes": boxes}, got, bf16)["status"] == "passed"


def test_the_users_tolerance_overrides_every_default(make_project) -> None:
    project = make_project(models.mlp(), {"build": {"tolerance": {"min_cosine": 0.9999}}})
    config = load_config(Path(project) / "gpux.yml")
    assert tolerance_for(config, "fp16", hint="bf16")["min_cosine"] == 0.9999
