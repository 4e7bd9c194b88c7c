"""The pass API (typed graph transformations) and the pass manager that runs them."""

from gpuxc.passes.api import *  # noqa: F401,F403
from gpuxc.passes.api import __all__  # noqa: F401
