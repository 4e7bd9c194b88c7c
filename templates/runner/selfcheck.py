"""The bundle's self-check: its reference inputs run on the runtime and device it got here, judged
by the manifest's tolerance, before the bundle takes traffic.

A bundle compiled for TensorRT, CoreML, DirectML or CUDA was never run on its device at compile
time (``verification.status: unverified``), and even a verified one can land on a host where its
runtime computes something else (an engine built for another GPU or TensorRT version, fp16 ranges
that overflow there, a provider that silently fell back). The self-check is the same comparison as
``python <bundle> verify`` (runner/compare.py), run once at start; the server reports ready only
after it passed (docs/server.md).

Standard library and NumPy only, like the rest of the runner.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from runner import compare

# serving.self_check in gpux.yml: run it always, only for variants not verified at compile time
# (the default), or never. $GPUXC_SELF_CHECK overrides the manifest's setting.
POLICIES = ("always", "unverified", "off")
POLICY_ENV = "GPUXC_SELF_CHECK"
DEFAULT_POLICY = "unverified"
# The adapter stops its own run at runtime.timeout (ONNX Runtime's terminate flag, OpenVINO's cancel);
# a runtime that cannot stop is abandoned this much later.
ABANDON_AFTER_S = 1.0
# Self-check threads abandoned while still running. The process must leave with os._exit (cli.py):
# an ordinary exit would wait on, or abort under, a runtime still in native code.
ABANDONED: list[threading.Thread] = []


class SelfCheckError(ValueError):
    """An unknown self-check policy."""


def resolve_policy(given: str | None, manifest_value: str | None) -> str:
    """The policy in force: the caller's, else $GPUXC_SELF_CHECK (read by the caller), else the manifest's."""
    policy = (given or manifest_value or DEFAULT_POLICY).strip().lower()
    if policy not in POLICIES:
        raise SelfCheckError(f"self-check policy '{policy}' is not one of {', '.join(POLICIES)}")
    return policy


def wanted(policy: str, verification_status: str | None) -> bool:
    """Whether a variant verified at compile time with ``verification_status`` is checked here."""
    return policy == "always" or (policy == "unverified" and verification_status != "passed")


def run_self_check(
    run: Callable[[dict[str, np.ndarray]], dict[str, Any]],
    inputs: dict[str, np.ndarray],
    expected: dict[str, np.ndarray],
    tolerance: dict[str, float],
    class_outputs: set[str],
    timeout: float,
) -> dict[str, Any]:
    """Run ``inputs`` through ``run`` and compare with ``expected`` under ``tolerance``.

    Bounded by ``timeout`` (runtime.timeout): the adapter's run stops itself at the timeout, and
    the check runs on a daemon thread abandoned :data:`ABANDON_AFTER_S` later if it has not (Python
    cannot stop a thread in native code). Either way the check fails as ``timeout`` and the variant
    is not used.
    """
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["actual"] = run(inputs)
        except BaseException as exc:  # reported below; a thread must not die with a traceback
            box["error"] = exc

    started = time.perf_counter()
    thread = threading.Thread(target=work, name="gpuxc-self-check", daemon=True)
    thread.start()
    thread.join(timeout + ABANDON_AFTER_S)
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {"seconds": round(seconds, 4), "tolerance": tolerance}
    if thread.is_alive():
        ABANDONED.append(thread)
        return {**result, "status": "timeout", "outputs": {},
                "failures": [f"did not finish within {timeout:g}s (runtime.timeout)"]}  # fmt: skip
    if "error" in box:
        error = box["error"]
        if isinstance(error, TimeoutError):
            return {**result, "status": "timeout", "outputs": {}, "failures": [first_line(error)]}
        return {**result, "status": "failed", "outputs": {},
                "failures": [f"the runtime failed on the reference inputs: {first_line(error)}"]}  # fmt: skip
    report = compare.compare(expected, box["actual"], tolerance, class_outputs)
    return {**result, "status": report["status"], "outputs": report["outputs"], "failures": report["failures"]}


def summary(result: dict[str, Any]) -> str:
    """One log line: ``self-check passed on cpu (CPUExecutionProvider) in 0.012 s, min cosine 1.000000``."""
    where = result.get("target", "?")
    if result.get("provider"):
        where += f" ({result['provider']})"
    line = f"self-check {result['status']} on {where} in {result.get('seconds', 0.0):.3f} s"
    cosines = [m["cosine"] for m in result.get("outputs", {}).values() if isinstance(m.get("cosine"), float)]
    if cosines:
        line += f", min cosine {min(cosines):.6f}"
    if result.get("failures"):
        line += ": " + "; ".join(result["failures"][:3])
    return line


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
