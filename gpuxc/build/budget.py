"""``runtime.gpu.memory``: candidates whose memory estimate is over the budget are refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gpuxc.errors import MemoryBudgetExceeded
from gpuxc.sizes import format_size_decimal as human

if TYPE_CHECKING:
    from gpuxc.build.candidate import Candidate
    from gpuxc.project.config import GpuxConfig


def check_budget(config: GpuxConfig, candidates: list[Candidate], say: Callable[[str], None], fixed: bool) -> None:
    """A fixed build over budget is an error that says which precision would fit; under
    --optimize auto an over-budget candidate is marked so and only none fitting is an error."""
    budget = config.runtime.gpu.memory_bytes
    if budget is None:
        return
    where = config.where("runtime", "gpu", "memory")
    for c in candidates:
        if c.memory is not None and c.memory.total_bytes > budget:
            if fixed:
                weights, acts = c.memory.weights_bytes, c.memory.activations_bytes
                advice = {  # weights scale with precision; activations stay fp32 at the boundaries
                    "fp16": weights // 2 + acts,
                    "int8": weights // 4 + acts,
                }
                fits = [p for p, need in advice.items() if need <= budget and p != c.variant.precision[:4]]
                hint = (
                    f"{' or '.join(fits)} would fit (estimated {', '.join(human(advice[p]) for p in fits)})"
                    if fits
                    else "no precision fits: raise runtime.gpu.memory or fix smaller shapes with build.shapes"
                )
                raise MemoryBudgetExceeded(
                    f"{where}: {c.variant.name} needs an estimated {human(c.memory.total_bytes)} "
                    f"(weights {human(weights)}, activations {human(acts)}), over the {human(budget)} budget",
                    hint=hint,
                )
            c.status, c.reason = "over-budget", f"estimated {human(c.memory.total_bytes)} > {human(budget)}"
            say(f"{c.variant.name}: over the memory budget ({c.reason})")
    if not fixed and all(c.status == "over-budget" for c in candidates):
        raise MemoryBudgetExceeded(f"{where}: no candidate fits the {human(budget)} budget")
