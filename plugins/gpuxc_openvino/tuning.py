"""Runtime settings ``--optimize auto`` tries on the chosen OpenVINO artifact (``Target.tuning_candidates``).

The recorded performance hint is LATENCY, which already means one stream on the CPU; what is left to
find is the thread count: a small model (a recurrent voice detector, ~0.1 ms) runs faster on one
thread than on a pool it must wake, a mid-sized one may prefer half the cores. Each candidate is
timed through the bundle's own adapter against the settings as recorded; the precision hint is not
touched here (it is a verified choice of its own).
"""

from __future__ import annotations

from typing import Any

from gpuxc.targets import Artifact


def tuning_candidates(artifact: Artifact) -> list[dict[str, Any]]:
    """Thread counts (INFERENCE_NUM_THREADS) and, with them, one stream (NUM_STREAMS) to try."""
    from gpuxc.host import physical_cores

    settings = artifact.settings
    if settings.get("intra_op_threads") or settings.get("performance_hint") == "throughput":
        return []  # a thread count someone set, or a throughput bundle (latency timing would mislead)
    cores = physical_cores()
    counts = [1] + ([cores // 2] if cores >= 4 else [])
    return [{"intra_op_threads": n, "num_streams": 1} for n in counts if n < cores]
