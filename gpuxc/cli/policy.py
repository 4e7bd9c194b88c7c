"""``gpuxc policy export``: a bundle's build decisions as a policy file that ``compile --policy`` replays."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from gpuxc.cli.app import BundleArg, VerboseOpt, app, err, handle_errors, require_bundle
from gpuxc.errors import BundleError

policy_app = typer.Typer(
    help="Policies: a bundle's chosen variant and settings as a file `compile --policy` rebuilds without search.",
    no_args_is_help=True,
)
app.add_typer(policy_app, name="policy")


@policy_app.command("export")
@handle_errors
def policy_export(
    bundle: BundleArg,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the policy here instead of stdout.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Print the policy of BUNDLE (YAML): its variant, settings, passes and the digests it was built from."""
    from gpuxc.build.policy import export_policy

    require_bundle(bundle)
    text = export_policy(bundle)
    if out is None:
        typer.echo(text, nl=False)
        return
    tmp = out.with_name(f".{out.name}.tmp")
    try:  # never a half-written policy where a good one was
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BundleError(f"{out}: cannot write the policy ({exc.strerror})") from None
    err(f"policy {out} (from {bundle})")
