from tests.browser import browser  # noqa: F401 - the fixture
from tests.integration.health_score.harness import health  # noqa: F401 - the fixture
