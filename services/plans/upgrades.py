"""Which plan to suggest when a customer hits a limit or asks for a feature their plan lacks (pure).

Follows each plan's ``upgrade_to`` chain and suggests the first plan that actually solves the problem:
the feature is on, or the meter's limit is higher (or unlimited) than the usage. If none does, the
next plan in the chain is still suggested (sales can talk), and ``None`` is returned only at the top.
"""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import urlencode

from services.plans.model import Plan, PlansConfig

# The ``code`` of an upgrade path, in entitlement answers and threshold events alike.
USAGE_LIMIT_EXCEEDED = "usage_limit_exceeded"
USAGE_LIMIT_APPROACHING = "usage_limit_approaching"
FEATURE_NOT_IN_PLAN = "feature_not_in_plan"


def upgrade_url(base: str, customer_id: str, feature: str, suggested_plan: str | None) -> str:
    """The link a front end opens to upgrade: ``base`` with the customer, the feature and the suggestion."""
    query = {"customer_id": customer_id, "feature": feature}
    if suggested_plan:
        query["plan"] = suggested_plan
    return f"{base}{'&' if '?' in base else '?'}{urlencode(query)}"


def _chain(config: PlansConfig, plan: Plan) -> list[Plan]:
    chain: list[Plan] = []
    seen = {plan.slug}
    current = plan
    while current.upgrade_to is not None and current.upgrade_to not in seen:
        nxt = config.plan(current.upgrade_to)
        if nxt is None:
            break
        chain.append(nxt)
        seen.add(nxt.slug)
        current = nxt
    return chain


def suggest_for_feature(config: PlansConfig, plan: Plan, feature: str) -> str | None:
    chain = _chain(config, plan)
    for candidate in chain:
        if candidate.features.get(feature):
            return candidate.slug
        if feature in candidate.meters:
            return candidate.slug
    return chain[0].slug if chain else None


def suggest_for_meter(config: PlansConfig, plan: Plan, meter: str, usage: Decimal) -> str | None:
    chain = _chain(config, plan)
    for candidate in chain:
        allowance = candidate.meters.get(meter)
        if allowance is None:
            continue
        if allowance.limit is None or not allowance.hard_limit or allowance.limit > usage:
            return candidate.slug
    return chain[0].slug if chain else None
