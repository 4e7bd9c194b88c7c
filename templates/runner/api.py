"""GPUXRuntime for this bundle: GPUX's Python API over the bundle's own runtime adapter.

Names, dtypes, shapes, labels and settings come from gpux-bundle.json at run
time; nothing about the model is baked into this file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from runner import compare, isa, layout, selfcheck, variants
from runner.inputs import InputChecks, InputError
from runner.labels import DEFAULT_TOP_K, rank_outputs
from runner.preprocess import PreprocessError, Preprocessor
from runner.profile import op_table
from runner.variants import Adapter, NoVariantError

# Every adapter's InferenceTimeout subclasses TimeoutError: one name catches a timeout of whichever
# variant runs (runner/runtime.py is not imported here: a fallback bundle runs without it).
InferenceTimeout = TimeoutError

BUNDLE_DIR = Path(__file__).resolve().parent.parent
MANIFEST_NAME = layout.MANIFEST_NAME
PROVIDER_ENV = "GPUXC_PROVIDER"
# Trusted pipelines with very large models may skip the start-up hash check (verify still checks).
SKIP_INTEGRITY_ENV = "GPUXC_SKIP_INTEGRITY"
_WARNED: set[str] = set()

class BundleError(RuntimeError):
    """The bundle is missing files or its manifest is unreadable."""


class NoVariant(BundleError):
    """No variant of the bundle runs here: each is in ``skipped`` with its stage and reason.
    ``self_check_failed``: at least one loaded but computed outside tolerance (or timed out)."""

    def __init__(self, message: str, skipped: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.skipped = skipped
        self.self_check_failed = any(s["stage"] == "self-check" for s in skipped)


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    path = bundle_dir / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{bundle_dir}: no {MANIFEST_NAME}; not a gpuxc bundle") from None
    except ValueError as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc})") from None
    if data.get("format") != "gpux-bundle" or data.get("format_version") != 1:
        raise BundleError(f"{path}: not a gpux-bundle v1 manifest")
    return data


class GPUXRuntime:
    """Run this bundle's model: ``infer``, ``benchmark``, ``get_model_info``, ``get_provider_info``."""

    def __init__(
        self,
        bundle_dir: str | os.PathLike[str] | None = None,
        provider: str | None = None,
        gpu_memory: str | None = None,
        timeout: float | None = None,
        self_check: str | None = None,
        **settings: Any,
    ) -> None:
        self.bundle_dir = Path(bundle_dir).resolve() if bundle_dir else BUNDLE_DIR
        self.manifest = read_manifest(self.bundle_dir)
        overrides = {k: v for k, v in settings.items() if v is not None}
        if gpu_memory is not None:
            overrides["gpu_memory"] = gpu_memory
        if timeout is not None:
            overrides["timeout"] = timeout
        explicit = provider or os.environ.get(PROVIDER_ENV) or None
        try:
            self.self_check_policy = selfcheck.resolve_policy(
                self_check or os.environ.get(selfcheck.POLICY_ENV), self.manifest.get("serving", {}).get("self_check"))
        except selfcheck.SelfCheckError as exc:
            raise BundleError(str(exc)) from None
        self.inputs = {spec["name"]: spec for spec in self.manifest["inputs"]}
        self.outputs = {spec["name"]: spec for spec in self.manifest["outputs"]}
        self._checks = InputChecks(self.manifest["inputs"])
        self._output_names = list(self.outputs)
        # Decoding images and tokenising text (runner/preprocess.py), set up once: the tokenizer is
        # loaded here, not per call.
        self._pre: Preprocessor | None = None
        if self.manifest.get("preprocessing"):
            try:
                self._pre = Preprocessor(self.manifest["preprocessing"], self.manifest["inputs"], self.bundle_dir)
            except PreprocessError as exc:
                raise BundleError(f"preprocessing: {exc}") from None
        # A tampered or truncated bundle is refused before its model or code is used.
        if os.environ.get(SKIP_INTEGRITY_ENV) != "1":
            problems = listed_file_problems(self.bundle_dir, self.manifest)
            if problems:
                raise BundleError("bundle integrity check failed: " + "; ".join(problems[:5]))
        # The first variant whose runtime is here, loads and passes its self-check (runner/variants.py).
        self._adapter: Adapter | None = None
        try:
            chosen = variants.choose(self.bundle_dir, variants.manifest_variants(self.manifest), overrides, explicit,
                                     self._check_variant)  # fmt: skip
        except NoVariantError as exc:
            raise NoVariant(str(exc), exc.skipped) from None
        self._adapter = chosen.adapter
        self.variant = chosen.variant
        self.skipped_variants = chosen.skipped
        self.self_check = chosen.self_check
        self.timeout = float(chosen.settings.get("timeout", 30.0))
        # Said once per process, on stderr, and kept for /info: a specialised bundle on a CPU without
        # the extension it was chosen for still runs, slower than the build measured.
        self.warnings = isa.isa_warnings(list(chosen.settings.get("requires_isa") or []),
                                         self.variant["runtime"]["adapter"])  # fmt: skip
        for line in self.warnings:
            if line not in _WARNED:
                _WARNED.add(line)
                print(f"warning: {line}", file=sys.stderr)

    # -- GPUX API ----------------------------------------------------------------------------

    def infer(self, input_data: dict[str, Any] | np.ndarray | Any) -> dict[str, np.ndarray]:
        """Run the model; ``input_data`` maps input names to arrays (or nested lists). A bundle with
        image preprocessing also takes, for its image input, encoded image bytes, a file path, a list
        of either, or uint8 pixels ``[H, W, C]``/``[N, H, W, C]``; one with text preprocessing
        ``{"text": str | list[str]}``. A bare value stands for the only (or the preprocessed) input."""
        if self._pre is not None:
            input_data = self._preprocess(input_data, True)
        # The hot path: one checked prepare and the adapter's run, nothing rebuilt per call.
        return self._require().run(self._checks.prepare(input_data), self._output_names, self.timeout)

    def rank_labels(self, outputs: dict[str, Any], top_k: int | None = None) -> dict[str, list[list[dict[str, Any]]]]:
        """Labelled outputs of ``infer`` ranked: ``{output: [[{"label", "score"}, ...] per row]}``,
        best first, ``top_k`` entries (default: the output's ``top_k`` in gpux.yml, else 5)."""
        try:
            return rank_outputs(outputs, self.outputs, top_k)
        except ValueError as exc:
            raise InputError(str(exc)) from None

    def benchmark(self, num_runs: int = 100, warmup_runs: int = 10,
                  input_data: dict[str, Any] | None = None, profile: bool = False) -> dict[str, Any]:
        """Latency statistics in milliseconds over ``num_runs`` runs after ``warmup_runs``; with
        ``profile`` (a runtime loaded with ``enable_profiling=True``) also ``profile``: time per op
        type from the runtime's own profiler, over every run (warm-up included)."""
        if num_runs < 1 or warmup_runs < 0:
            raise InputError("num_runs must be >= 1 and warmup_runs >= 0")
        feeds = self.prepare(input_data) if input_data is not None else self.reference_inputs()
        for _ in range(warmup_runs):
            self._run(feeds)
        times = []
        for _ in range(num_runs):
            start = time.perf_counter()
            self._run(feeds)
            times.append((time.perf_counter() - start) * 1000.0)
        stats: dict[str, Any] = compare.latency_stats(times)
        stats["warmup_runs"] = warmup_runs
        if profile:
            records = getattr(self._require(), "profile", lambda: None)()
            if records is None:
                raise InputError("profiling needs a runtime loaded with enable_profiling=True, on ONNX Runtime or "
                                 "OpenVINO (bench --profile does that)")  # fmt: skip
            stats["profile"] = op_table(records, num_runs + warmup_runs)
        return stats

    def get_model_info(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": m["name"],
            "version": m["version"],
            "description": m.get("description"),
            "target": m["target"],
            "format": self.variant["artifact"]["format"],
            "path": self.variant["artifact"]["entry"],
            "size_bytes": sum(f["size"] for f in m["files"] if f["path"].startswith(self._artifact_dir())),
            "inputs": [self._describe(spec) for spec in m["inputs"]],
            "outputs": [self._describe(spec) for spec in m["outputs"]],
            "metadata": m.get("metadata", {}),
            "source_sha256": m["source"]["sha256"],
            "opsets": m["signature"]["opsets"],
            "verification": {k: m["verification"].get(k) for k in ("status", "reason", "runtime")},
            "gpuxc_version": m["gpuxc_version"],
            "build_host_isa": m["host"].get("isa"),
            "requires_isa": list(m["artifact"].get("settings", {}).get("requires_isa") or []),
            "warnings": list(self.warnings),
            "preprocessing": self._pre.describe() if self._pre is not None else None,
            # Which variant runs here (a bundle compiled with --fallback has several) and why any before it did not.
            "variant": {"target": self.variant["target"], "precision": self.variant.get("precision"),
                        "compile_time_verification": self.variant["verification"].get("status")},
            "skipped_variants": [{k: v for k, v in s.items() if k != "self_check"} for s in self.skipped_variants],
            "self_check": self.self_check_report(),
        }

    def self_check_report(self) -> dict[str, Any]:
        """The start-up self-check: its result, or ``{"status": "off"}``/``"not needed"`` and why."""
        if self.self_check is not None:
            return self.self_check
        status = "off" if self.self_check_policy == "off" else "not needed"
        reason = ("serving.self_check is off" if status == "off" else
                  f"verified at compile time on {self.variant['verification'].get('runtime') or 'the build host'}; "
                  "serving.self_check: always checks it here too")  # fmt: skip
        return {"status": status, "policy": self.self_check_policy, "reason": reason, "target": self.variant["target"]}

    @property
    def preprocessing(self) -> str | None:
        """``"image"``, ``"text"`` or None: what this bundle decodes or tokenises for its callers."""
        return self._pre.kind if self._pre is not None else None

    @property
    def preprocessed_input(self) -> str | None:
        """The name callers send images or text under (``"image"``, ``"text"``), or None."""
        return self._pre.key if self._pre is not None else None

    def get_provider_info(self) -> dict[str, Any]:
        return self._require().provider_info()

    def get_available_providers(self) -> list[str]:
        return self._require().available_providers()

    def cleanup(self) -> None:
        if self._adapter is not None:
            self._adapter.close()
        self._adapter = None

    def __enter__(self) -> GPUXRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- bundle extras -----------------------------------------------------------------------

    def reference_inputs(self) -> dict[str, np.ndarray]:
        return self._load_npz(self.manifest["reference"]["inputs"])

    def reference_outputs(self) -> dict[str, np.ndarray]:
        return self._load_npz(self.manifest["reference"]["outputs"])

    def verify(self) -> dict[str, Any]:
        """Re-run the reference inputs here and compare with the reference outputs."""
        actual = self._run(self.reference_inputs())
        tolerance = self.variant["verification"]["tolerance"]
        report = compare.compare(self.reference_outputs(), actual, tolerance, self._class_outputs())
        report["provider"] = self.get_provider_info().get("name")
        report["variant"] = self.variant["target"]
        report["tolerance"] = tolerance
        return report

    def check_integrity(self) -> list[str]:
        """Files whose size or sha256 differ from the manifest (empty when intact)."""
        return listed_file_problems(self.bundle_dir, self.manifest)

    def prepare(self, input_data: dict[str, Any] | np.ndarray | Any, *, paths: bool = True) -> dict[str, np.ndarray]:
        """Decode/tokenise (see ``infer``), then validate names, dtypes, ranks, fixed dims and
        max_length; return arrays to feed. ``paths=False`` (the server) never reads a file a string names."""
        if self._pre is not None:
            input_data = self._preprocess(input_data, paths)
        return self._checks.prepare(input_data)

    # -- internals ---------------------------------------------------------------------------

    def _check_variant(self, variant: dict[str, Any], adapter: Adapter,
                       settings: dict[str, Any]) -> dict[str, Any] | None:  # fmt: skip
        """The self-check of a freshly loaded variant (runner/selfcheck.py), or None when the policy skips it."""
        status = variant["verification"].get("status")
        if not selfcheck.wanted(self.self_check_policy, status):
            return None
        timeout = float(settings.get("timeout", 30.0))
        names = self._output_names
        result = selfcheck.run_self_check(lambda feeds: adapter.run(feeds, names, timeout), self.reference_inputs(),
                                          self.reference_outputs(), variant["verification"]["tolerance"],
                                          self._class_outputs(), timeout)  # fmt: skip
        info = _provider_info(adapter) if result["status"] != "timeout" else {}
        result.update(target=variant["target"], provider=info.get("name"), runtime=info.get("runtime"),
                      policy=self.self_check_policy, compile_time_status=status)  # fmt: skip
        return result

    def _artifact_dir(self) -> str:
        """The folder of the running variant's artifact (``model/`` or ``variants/<target>/``), with its slash."""
        parts = self.variant["artifact"]["entry"].split("/")
        return (parts[0] if parts[0] == layout.MODEL_DIR else "/".join(parts[:2])) + "/"

    def _class_outputs(self) -> set[str]:
        return {name for name, spec in self.outputs.items() if spec.get("labels")}

    def _preprocess(self, input_data: Any, paths: bool) -> Any:
        pre = self._pre
        assert pre is not None
        if not isinstance(input_data, dict):
            bare_image = pre.kind == "image" and (isinstance(input_data, bytes | bytearray | str | os.PathLike) or (
                isinstance(input_data, np.ndarray) and len(self.inputs) == 1))  # fmt: skip
            bare_text = pre.kind == "text" and isinstance(input_data, str | list)
            if not (bare_image or bare_text):
                return input_data
            input_data = {pre.key: input_data}
        try:
            return pre.apply(input_data, paths)
        except PreprocessError as exc:
            raise InputError(str(exc)) from None

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._require().run(feeds, self._output_names, self.timeout)

    def _require(self) -> Adapter:
        if self._adapter is None:
            raise RuntimeError("runtime was cleaned up; create a new one")
        return self._adapter

    def _load_npz(self, rel: str) -> dict[str, np.ndarray]:
        with np.load(self.bundle_dir / rel, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    @staticmethod
    def _describe(spec: dict[str, Any]) -> dict[str, Any]:
        ranked = {"top_k": spec.get("top_k") or DEFAULT_TOP_K} if spec.get("labels") else {}
        return {
            "name": spec["name"],
            "type": spec["dtype"],
            "shape": spec.get("shape"),
            "required": True,
            "description": spec.get("description"),
            "labels": spec.get("labels"),
            "max_length": spec.get("max_length"),
            **ranked,
        }


def _provider_info(adapter: Adapter) -> dict[str, Any]:
    try:
        return adapter.provider_info()
    except Exception:  # a report must not fail the start: the check itself already passed or failed
        return {}


def listed_file_problems(bundle_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """Every file the manifest lists, present with its size and sha256 (empty list: intact). Unlike
    gpuxc's ``differences_from_manifest`` it does not look for unlisted files: a deployed bundle may
    gain caches and logs."""
    problems = []
    for entry in manifest.get("files", []):
        path = bundle_dir / entry["path"]
        if not path.is_file():
            problems.append(f"{entry['path']}: missing")
        elif path.stat().st_size != entry["size"] or _sha256(path) != entry["sha256"]:
            problems.append(f"{entry['path']}: contents differ from the manifest")
    return problems


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def to_jsonable(value: Any) -> Any:
    """Arrays to nested lists; NaN and infinities (not JSON) to null."""
    array = np.asarray(value)
    if array.dtype.kind == "f":
        obj = array.astype(object)
        obj[~np.isfinite(array)] = None
        return obj.tolist()
    if array.dtype.kind in "SU":
        return array.astype(str).tolist()
    return array.tolist()


def load(bundle_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> GPUXRuntime:
    """The runtime of the bundle this runner belongs to (or of ``bundle_dir``)."""
    return GPUXRuntime(bundle_dir, **kwargs)


__all__ = ["GPUXRuntime", "load", "InputError", "BundleError", "NoVariant", "InferenceTimeout", "to_jsonable",
           "read_manifest"]
