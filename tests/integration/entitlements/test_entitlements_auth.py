"""Who may check an entitlement, on the real API: 401 without a credential, 403 for another customer's
key (and for any customer that is not the key's, existing or not), 200 for the customer's own key of
either kind and for an operator."""

from __future__ import annotations

from tests.auth_support import Case, Tenants, check_cases, check_origin_limits, new_customer, tenant_cases
from tests.integration.metering.harness import Metering


def test_the_entitlement_check_takes_the_customers_own_key_or_an_operator(metering: Metering) -> None:
    api = metering.start_entitlements()
    tenants = Tenants.make(metering.database)
    cases = tenant_cases("GET", lambda c: f"/v1/entitlements/{c}/api_requests", tenants, publishable=True)
    # An operator may look up anyone; a customer that does not exist is then a plain 404.
    cases.append(Case("viewer", "GET", "/v1/entitlements/nobody-at-all/api_requests", 404))
    check_cases(api.url, tenants, cases)


def test_a_key_limited_to_an_origin_checks_entitlements_only_from_that_page(metering: Metering) -> None:
    api = metering.start_entitlements()
    customer = new_customer(metering.database, "free")
    check_origin_limits(
        api.url, metering.database, customer, "GET", f"/v1/entitlements/{customer}/api_requests"
    )
