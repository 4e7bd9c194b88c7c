"""``build.options``: every target named there exists, and each target's options validate."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from gpuxc.errors import ConfigError, did_you_mean
from gpuxc.project.config import GpuxConfig
from gpuxc.targets import Target


def check_option_targets(config: GpuxConfig, targets: dict[str, Any]) -> None:
    """Every ``build.options.<name>`` names a known target."""
    for name in config.build.options:
        if name not in targets:
            raise ConfigError(
                f"{config.where('build', 'options', name, key=True)}: options for unknown target '{name}'"
                f"{did_you_mean(name, targets)}"
            )


def target_options(config: GpuxConfig, target: Target) -> Any:
    """``build.options.<target>`` validated by the target's Options model; errors at file:line:col."""
    raw = config.build.options.get(target.name, {})
    try:
        return target.Options.model_validate(raw)
    except ValidationError as exc:
        err = next((e for e in exc.errors(include_url=False) if e["type"] == "extra_forbidden"), exc.errors()[0])
        loc = ("build", "options", target.name, *err["loc"])
        dotted = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            hint = did_you_mean(str(err["loc"][-1]), target.Options.model_fields)
            raise ConfigError(f"{config.where(*loc, key=True)}: unknown option '{dotted}'{hint}") from None
        raise ConfigError(f"{config.where(*loc)}: {dotted}: {err['msg']}") from None
