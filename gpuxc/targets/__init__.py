"""The target API: what a plugin implements to emit one kind of bundle."""

from gpuxc.targets.api import *  # noqa: F401,F403
from gpuxc.targets.api import __all__  # noqa: F401
