"""The growth service (HTTP :8085): feature flags, activation thresholds and the onboarding engine.

docs/growth.md describes it; ``python -m services.growth`` runs it.
"""
