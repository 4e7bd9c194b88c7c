"""Entry point of this gpuxc bundle: ``python <bundle> run|verify|bench|serve|info``.

Needs only requirements.txt.
"""

import os
import sys

# `python <bundle>` puts the bundle on sys.path already; `python <bundle>/__main__.py` may not.
BUNDLE_DIR = os.path.dirname(os.path.abspath(__file__))
if BUNDLE_DIR not in sys.path:
    sys.path.insert(0, BUNDLE_DIR)

from runner.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
