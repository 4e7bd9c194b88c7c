"""Models whose outputs are sequences of maps (skl2onnx classifiers with ZipMap)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fixtures import models
from gpuxc.build.pipeline import compile_project


def test_zipmap_classifier_compiles_verifies_and_runs(make_project, tmp_path: Path) -> None:
    project = make_project(models.zipmap_classifier())
    [result] = compile_project(project, ["cpu"], tmp_path / "dist")
    assert result.verification["status"] == "passed"
    manifest = json.loads((result.path / "gpux-bundle.json").read_text())
    [probabilities] = [o for o in manifest["outputs"] if o["name"] == "probabilities"]
    assert probabilities["dtype"] == "seq(map(int64,float32))"

    # The reference is stored without pickle, as a dense [N, labels] array.
    with np.load(result.path / "reference" / "outputs.npz", allow_pickle=False) as ref:
        stored = ref["probabilities"]
    x = {"X": np.asarray([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)}
    expected = ort.InferenceSession(str(project / "model.onnx")).run(None, x)
    assert stored.ndim == 2 and stored.shape[1] == 3

    done = subprocess.run(
        [sys.executable, str(result.path), "run", "--input", json.dumps({"X": x["X"].tolist()})],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    outputs = json.loads(done.stdout)
    assert outputs["label"] == expected[0].tolist()
    got = outputs["probabilities"][0]
    assert {int(k): v for k, v in got.items()} == expected[1][0]

    verify = subprocess.run([sys.executable, str(result.path), "verify"], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
