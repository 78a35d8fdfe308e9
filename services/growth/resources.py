"""What the growth service holds while it runs (:class:`Growth`, opened by the app's lifespan) and the
dependency its routes receive it through (:func:`resources`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from services.customers import CustomerDirectory
from services.growth.activation_view import ActivationView
from services.growth.config import GrowthSettings
from services.growth.flags import Evaluator, FlagsRuntime
from services.growth.flagstore import FlagStore
from services.growth.loop import ActivationLoop
from services.growth.onboarding import OnboardingConfig
from services.growth.overrides import FlagOverrides
from services.growth.progress import ProgressStore
from services.growth.telemetry import TelemetryWriter
from services.kernel import auth
from services.kernel.http import resources_dependency
from services.kernel.listen import Listener
from services.kernel.privacy import ErasureFollower


@dataclass
class Growth:
    """The resources the lifespan opened."""

    settings: GrowthSettings
    store: FlagStore
    runtime: FlagsRuntime
    evaluator: Evaluator
    listener: Listener
    telemetry: TelemetryWriter
    onboarding: OnboardingConfig
    progress: ProgressStore
    activation: ActivationView
    loop: ActivationLoop | None
    erasures: ErasureFollower
    authenticator: auth.Authenticator
    # Customers exist before growth writes anything for them (an operator may name any customer).
    customers: CustomerDirectory
    # Flag values onboarding completion actions set for a person or customer (migration 0120).
    overrides: FlagOverrides


# 503 ``starting`` with Retry-After until the lifespan has opened them (services/kernel/http.py).
resources = resources_dependency(Growth, "the growth service is starting or stopping", code="starting")
Resources = Annotated[Growth, Depends(resources)]
