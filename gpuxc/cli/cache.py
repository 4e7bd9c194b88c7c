"""``gpuxc cache ls | clear``: the build cache's entries."""

from __future__ import annotations

import json

import typer

from gpuxc.cli.app import CacheDirOpt, JsonOpt, VerboseOpt, app, err, handle_errors

cache_app = typer.Typer(help="The build cache: list or clear cached bundles.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("ls")
@handle_errors
def cache_ls(cache_dir: CacheDirOpt = None, json_out: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """List cached bundles: key, project, target, variant, size, last use."""
    from gpuxc.cache.store import BuildCache, default_cache_dir

    cache = BuildCache(cache_dir if cache_dir is not None else default_cache_dir())
    entries = cache.entries()
    if json_out:
        rows = [{"key": e.key, "size_bytes": e.size_bytes, **{k: v for k, v in e.info.items() if k != "files"}}
                for e in entries]  # fmt: skip
        typer.echo(json.dumps({"cache_dir": str(cache.root), "entries": rows}, indent=2))
        return
    err(f"cache {cache.root}: {len(entries)} entries, {sum(e.size_bytes for e in entries) / 2**20:.1f} MiB")
    for e in entries:
        if "corrupted" in e.info:
            typer.echo(f"{e.key[:12]}  corrupted: {e.info['corrupted']}")
            continue
        i = e.info
        typer.echo(
            f"{e.key[:12]}  {i.get('name')}-{i.get('version')}  {i.get('target')}  {i.get('variant')}  "
            f"{e.size_bytes / 2**20:.1f} MiB  last used {i.get('last_used')}"
        )


@cache_app.command("clear")
@handle_errors
def cache_clear(cache_dir: CacheDirOpt = None, verbose: VerboseOpt = False) -> None:
    """Remove every cached bundle."""
    from gpuxc.cache.store import BuildCache, default_cache_dir

    cache = BuildCache(cache_dir if cache_dir is not None else default_cache_dir())
    count, freed = cache.clear()
    err(f"cache {cache.root}: removed {count} entries, {freed / 2**20:.1f} MiB")
