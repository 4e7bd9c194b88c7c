"""The ``gpuxc`` command line (Typer): one module per command, registered on :data:`app`.

Human messages and progress go to stderr, data (``--json``) to stdout; errors become one line and
an exit code in :mod:`gpuxc.cli.app`. Heavy modules (onnx, onnxruntime) are imported inside the
commands so that ``gpuxc --help`` stays fast.
"""

from __future__ import annotations

# Each module registers its command(s) on import; this order is the order of `gpuxc --help`.
# isort: off
import gpuxc.cli.compile
import gpuxc.cli.inspect
import gpuxc.cli.targets
import gpuxc.cli.cache
import gpuxc.cli.init
import gpuxc.cli.delegate
import gpuxc.cli.verify
import gpuxc.cli.bench
import gpuxc.cli.policy
import gpuxc.cli.export  # noqa: F401

# isort: on
from gpuxc.cli.app import app

__all__ = ["app", "main"]


def main() -> int:
    """The ``gpuxc`` console script: runs the app, returns its exit status."""
    try:
        app(standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0
