"""A stateful Stripe emulator for the local stack and the tests (stripe-mock stays the shape check)."""
