"""``gpuxc targets``: every target, available here or not, why, and how to install it."""

from __future__ import annotations

import json

import typer

from gpuxc.cli.app import JsonOpt, VerboseOpt, app, handle_errors


@app.command()
@handle_errors
def targets(json_out: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """List every target: available on this machine or not, why, and how to install it."""
    from gpuxc.plugin import get_registry

    registry = get_registry()
    rows = []
    for name, cls in sorted(registry.targets.items()):
        target = cls()
        availability = target.check_available()
        rows.append({
            "name": name,
            "description": cls.description,
            "available": availability.available,
            "reason": availability.reason,
            "install_hint": availability.install_hint or (None if availability.available else cls.install_hint),
            "verifies_here": availability.available
            and target.why_unverifiable() is None
            and target.why_stand_in() is None,
            "verify_note": (target.why_unverifiable() or target.why_stand_in())
            if availability.available
            else None,
            "plugin": registry.origins.get(f"target:{name}"),
        })  # fmt: skip
    if json_out:
        typer.echo(json.dumps({"targets": rows, "passes": sorted(registry.passes)}, indent=2))
        return
    for row in rows:
        state = "available" if row["available"] else "unavailable"
        typer.echo(f"{row['name']:<10} {state:<12} {row['description']}")
        if not row["available"]:
            typer.echo(
                f"{'':<10} reason: {row['reason']}"
                + (f"; install: {row['install_hint']}" if row["install_hint"] else "")
            )
        elif row["verify_note"]:
            typer.echo(f"{'':<10} not verified here: {row['verify_note']}")
