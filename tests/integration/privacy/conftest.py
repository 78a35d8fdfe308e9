"""The privacy tests run ingest, enrichment, growth, metering and the health score together: their
fixtures."""

from tests.integration.enrichment.conftest import world  # noqa: F401
from tests.integration.growth.conftest import start_growth  # noqa: F401
from tests.integration.ingest.conftest import new_tenant, start_ingest, tenant  # noqa: F401
