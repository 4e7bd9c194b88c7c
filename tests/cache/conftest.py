"""The cache's end-to-end tests run the ``gpuxc`` console script, like the integration tests."""

from tests.integration.conftest import gpuxc_script  # noqa: F401 (a fixture: pytest finds it by name here)
