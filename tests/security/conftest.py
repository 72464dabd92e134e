"""The security tests use the integration tests' test host (real tools, as root)."""

from tests.integration.conftest import host_runtime_untouched as host_runtime_untouched
from tests.integration.conftest import vzhost as vzhost
