"""Warm rebuilds: a project's bundles restored from the build cache.

Runs before anything heavy is imported: the key is computed from the config, file digests,
plugin and template code (hashed, not imported) and host facts, so a rebuild whose every target
is cached never loads onnx, ONNX Runtime, the plugins or the model. ``gpuxc compile`` calls
:func:`restore_all` first and falls back to the full pipeline, which uses the same keys
(:func:`build_key`) to restore per target and to store what it builds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from gpuxc.bundle import layout
from gpuxc.bundle import writer as bundle
from gpuxc.bundle.archive import write_archives
from gpuxc.bundle.writer import BundleResult
from gpuxc.cache.key import calibration_digest, code_digest, host_facts, key_document, key_of
from gpuxc.cache.store import BuildCache, cache_disabled_by_env, default_cache_dir
from gpuxc.digests import sha256_file
from gpuxc.errors import ConfigError
from gpuxc.project.config import GpuxConfig, check_fallback_names
from gpuxc.project.config_load import find_config, load_config

Progress = Callable[[str], None]


@dataclass
class CacheKey:
    key: str
    document: dict[str, Any]


def open_cache(cache_dir: Path | None, use_cache: bool, say: Progress) -> BuildCache | None:
    """The cache to use, or None with ``--no-cache`` / ``$GPUXC_NO_CACHE``."""
    if not use_cache or cache_disabled_by_env():
        return None
    return BuildCache(cache_dir if cache_dir is not None else default_cache_dir(), say)


def load_build_config(path: Path, config_path: Path | None, precision: str | None, optimize: str | None,
                      fallback: list[str] | None = None) -> GpuxConfig:  # fmt: skip
    """gpux.yml with the CLI's overrides applied: what the manifest and the cache key record."""
    config = load_config(find_config(path, config_path))
    if fallback is not None:  # checked as build.fallback is (the pipeline checks the names against the targets)
        try:
            config.build.fallback = check_fallback_names(list(fallback))
        except ValueError as exc:
            raise ConfigError(f"--fallback: {exc}") from None
    # The CLI offers only the schema's values (its Precision and Optimize choices), so these are
    # assigned unchecked, as they always were.
    if precision is not None:
        config.build.precision = cast(Any, precision)
    if optimize is not None:
        config.build.optimize = cast(Any, optimize)
    return config


def build_key(config: GpuxConfig, target: str, reproducible: bool, policy: str | None = None) -> CacheKey | None:
    """The cache key of one target's build (replaying the policy of digest ``policy``, if any); None
    when an input is missing (the build reports it)."""
    from gpuxc.bundle.runner_source import template_root
    from gpuxc.plugin.manager import plugin_module_names

    try:
        model_path = config.model_path
        if not model_path.is_file():
            return None
        model_sha256 = sha256_file(model_path)
        calibration = calibration_digest(config)
        # The tokenizer is copied into text bundles: its content is an input of the build.
        tokenizer = None
        if config.preprocessing.kind == "text":
            from gpuxc.project.preprocessing import tokenizer_path  # pydantic records: not on every warm build

            tokenizer = sha256_file(tokenizer_path(config))
    except (OSError, ConfigError):
        return None  # unreadable inputs: the build itself reports them properly
    document = key_document(
        config=config.canonical(),
        target=target,
        reproducible=reproducible,
        model_sha256=model_sha256,
        calibration_digest=calibration,
        code=code_digest(plugin_module_names(), [template_root()]),
        host=host_facts(),
        policy=policy,
        tokenizer_sha256=tokenizer,
    )
    return CacheKey(key_of(document), document)


def lookup(cache: BuildCache, key: CacheKey, config: GpuxConfig, target: str, out_dir: Path,
           say: Progress) -> BundleResult | None:  # fmt: skip
    """Publish the cached bundle for ``key`` at its final path; None on a miss."""
    final = out_dir / layout.bundle_name(config.name, config.version, target)
    model_dir = config.model_path.parent
    with bundle.staging_dir(final) as stage:
        info = cache.restore(key.key, stage, lambda paths: external_digests(model_dir, paths))
        if info is None:
            return None
        bundle.publish(stage, final)
    variant = str(info.get("variant", "?"))
    verification = info.get("verification") or {}
    say(f"[{target}] cache hit {key.key[:12]}: bundle {final} ({variant}, verification {verification.get('status')})")
    return BundleResult(target, final, verification, variant=variant)


def external_digests(model_dir: Path, paths: list[str]) -> dict[str, str]:
    """sha256 of the model's external-data files; {} if one is no longer a plain file (a miss)."""
    out = {}
    for rel in paths:
        path = model_dir / rel
        if path.is_symlink() or not path.is_file():
            return {}
        out[rel] = sha256_file(path)
    return out


def store(cache: BuildCache, key: CacheKey, config: GpuxConfig, external_data: list[str], stage: Path,
          variant: str, verification: dict[str, Any]) -> None:  # fmt: skip
    """Keep a copy of a finished staging folder (called just before it is published)."""
    info = {
        "name": config.name,
        "version": config.version,
        "target": key.document["target"],
        "variant": variant,
        "verification": verification,
        "external_data": external_digests(config.model_path.parent, external_data),
        "key_document": key.document,
    }
    cache.store(key.key, stage, info)


def restore_all(
    path: Path,
    targets: list[str] | None,
    out: Path | None,
    config_path: Path | None,
    say: Progress,
    *,
    precision: str | None = None,
    optimize: str | None = None,
    archive: bool = False,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    policy: str | None = None,
    fallback: list[str] | None = None,
) -> list[BundleResult] | None:
    """Every requested bundle from the cache, or None if any target must be built. ``policy``: the
    digest of the policy replayed (its precision and optimize are passed as the overrides)."""
    cache = open_cache(cache_dir, use_cache, say)
    if cache is None:
        return None
    config = load_build_config(path, config_path, precision, optimize, fallback)
    names = targets or config.build.targets
    keys = [build_key(config, name, archive, policy) for name in names]
    if not all(k is not None and cache.has(k.key) for k in keys):
        return None
    out_dir = (out or Path("dist")).resolve()
    results = []
    for name, key in zip(names, keys, strict=True):
        assert key is not None
        result = lookup(cache, key, config, name, out_dir, say)
        if result is None:
            return None  # a corrupted entry: the pipeline rebuilds it
        results.append(result)
    if archive:
        write_archives(results, say)
    return results
