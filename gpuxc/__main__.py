"""``python -m gpuxc``: the same CLI as the ``gpuxc`` script.

For ``-m`` Python puts the working directory first on ``sys.path``. The working directory is
often a project or model folder, which gpuxc treats as untrusted: a ``onnxruntime.py`` or
``gpuxc_cpu.py`` there must never be imported. So it is dropped before anything else loads,
unless it is where gpuxc itself was imported from (a source checkout).
"""

import os
import sys


def _drop_working_directory() -> None:
    cwd = os.path.realpath(os.getcwd())
    home = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if cwd != home:
        sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != cwd]


_drop_working_directory()

from gpuxc.cli import main  # noqa: E402

raise SystemExit(main())
