"""``gpuxc inspect``: a model's signature, a bundle's manifest summary, or whether a model converts for a target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from gpuxc.cli.app import JsonOpt, VerboseOpt, app, handle_errors
from gpuxc.errors import BundleError, ConfigError, GpuxcError


@app.command()
@handle_errors
def inspect(
    path: Annotated[Path, typer.Argument(help="An ONNX model file or a bundle folder.")],
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
    target: Annotated[
        str | None, typer.Option("--target", help="Check the model converts for a target (coreml).")
    ] = None,
) -> None:
    """Describe a model (signature, opsets, size) or a bundle (manifest summary)."""
    if target is not None:
        _inspect_convertible(path, target, json_out)
    elif path.is_dir():
        _inspect_bundle(path, json_out)
    else:
        _inspect_model(path, json_out)


def _inspect_bundle(path: Path, json_out: bool) -> None:
    from gpuxc.bundle.manifest import read_manifest

    manifest = read_manifest(path)
    fields = {"name", "version", "target", "gpuxc_version", "inputs", "outputs", "verification", "artifact",
              "runtime", "source", "preprocessing", "variants"}  # fmt: skip
    data = manifest.model_dump(mode="json", include=fields)
    data["passes"] = [{"name": p.name, "status": p.status, "seconds": p.seconds} for p in manifest.build.passes]
    if json_out:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    typer.echo(f"bundle {manifest.name} {manifest.version} for {manifest.target} (gpuxc {manifest.gpuxc_version})")
    typer.echo(f"  artifact: {manifest.artifact.entry} ({manifest.artifact.format})")
    typer.echo(f"  verification: {manifest.verification.status}"
               + (f" ({manifest.verification.reason})" if manifest.verification.reason else ""))  # fmt: skip
    typer.echo(f"  passes: {', '.join(p['name'] + ':' + p['status'] for p in data['passes']) or 'none'}")
    for index, v in enumerate(manifest.variants):  # build.fallback: tried by the runner in this order
        role = "primary" if index == 0 else f"fallback {index}"
        status = v.verification.status + (f" ({v.note})" if v.note else "")
        typer.echo(f"  variant {v.target} ({role}): {v.artifact.entry} {v.variant}, verification {status}")
    for kind, tensors in (("input", manifest.inputs), ("output", manifest.outputs)):
        for t in tensors:
            typer.echo(f"  {kind} {t.name}: {t.dtype} {t.shape}" + (f" labels={len(t.labels)}" if t.labels else ""))
    pre = manifest.preprocessing
    if pre is not None:
        text = pre.summary() if pre.kind == "image" else (f"text through {pre.tokenizer} (max_length {pre.max_length}, "
                                                          f"padding {pre.padding}) -> {pre.ids}")  # fmt: skip
        typer.echo(f"  preprocessing: {text}")


def _inspect_model(path: Path, json_out: bool) -> None:
    from gpuxc.project.isolation import load_model

    sig = load_model(path).signature
    if json_out:
        typer.echo(sig.model_dump_json(indent=2))
        return
    typer.echo(f"{path.name}: IR {sig.ir_version}, opsets {sig.opsets}, {sig.node_count} nodes, {sig.size_bytes} bytes"
               + (f", producer {sig.producer}" if sig.producer else ""))  # fmt: skip
    for kind, tensors in (("input", sig.inputs), ("output", sig.outputs)):
        for t in tensors:
            typer.echo(f"  {kind} {t.name}: {t.dtype} {t.shape}")
    if sig.external_data:
        typer.echo(f"  external data: {', '.join(sig.external_data)}")
    typer.echo(f"  sha256 {sig.sha256}")


def _inspect_convertible(path: Path, target: str, json_out: bool) -> None:
    """Whether the model translates for ``target``, and which op types it lacks (no build)."""
    if target != "coreml":
        raise ConfigError(f"inspect --target supports only coreml, not '{target}'")
    if path.is_dir():
        raise BundleError(f"{path}: inspect --target takes an ONNX model file, not a bundle")
    from gpuxc_coreml.translate import unsupported_ops  # imported here: the other commands do not need it

    from gpuxc.project.isolation import load_model

    loaded = load_model(path)
    raw = unsupported_ops(loaded.proto)
    missing, shapes = raw, None
    if raw:
        # Shape arithmetic (Shape, Range, Mod, ...) folds away once input shapes are fixed, as
        # compile does with build.shapes: predict with the same passes at the default sizes.
        missing, shapes = _unsupported_after_folding(loaded, path, target, unsupported_ops) or (raw, None)
    if json_out:
        typer.echo(json.dumps({"target": target, "convertible": not missing, "unsupported": missing,
                               "unsupported_before_folding": raw, "folded_at_shapes": shapes}))  # fmt: skip
        return
    if missing:
        typer.echo(f"{path.name}: not convertible to {target}; missing ops: "
                   + ", ".join(f"{op} x{n}" for op, n in missing.items()))  # fmt: skip
    elif raw:
        typer.echo(f"{path.name}: translates for {target} once input shapes are fixed (e.g. build.shapes: {shapes}); "
                   f"{', '.join(raw)} fold away")  # fmt: skip
    else:
        typer.echo(f"{path.name}: every op translates for {target}")


def _unsupported_after_folding(loaded: Any, path: Path, target: str, unsupported_ops: Any) -> Any:
    """(missing ops, shapes) after fix-shapes + constant folding at the default sizes, or None."""
    import tempfile

    from gpuxc.passes import PassContext, PassManager, PassSpec
    from gpuxc.plugin import get_registry
    from gpuxc.project.calibration import resolve_model_shapes

    try:
        shapes = resolve_model_shapes(loaded.signature)
        specs = [PassSpec("fix-shapes", {"shapes": shapes}), PassSpec("fold-constants", {}, required=False),
                 PassSpec("ort-optimize", {"level": "basic"})]  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="gpuxc-inspect-") as tmp:
            ctx = PassContext(workdir=Path(tmp), target=target, model_dir=path.parent)
            model, _ = PassManager(get_registry()).run(loaded.proto, specs, ctx)
        return unsupported_ops(model), shapes
    except GpuxcError:
        return None
