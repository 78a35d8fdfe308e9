"""The tests' name for the Stripe emulator (promoted to ``services/stripe_emulator``, which the local stack
runs as a process): the same class, served in the test process on a free port."""

from services.stripe_emulator.emulator import Faults, Stats, StripeEmulator

StripeDouble = StripeEmulator

__all__ = ["Faults", "Stats", "StripeDouble", "StripeEmulator"]
