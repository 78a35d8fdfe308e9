"""What every part of the emulator shares: Stripe's error shape and its form encoding."""

from __future__ import annotations

import re
from typing import Any


class StripeApiError(Exception):
    """An answer Stripe gives as an error: status, ``{"error": {...}}`` body, extra headers."""

    def __init__(
        self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
        code: str | None = None, headers: dict[str, str] | None = None, saved: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(message)
        body: dict[str, Any] = {"message": message, "type": type_}
        if param is not None:
            body["param"] = param
        if code is not None:
            body["code"] = code
        self.status, self.body, self.headers = status, {"error": body}, headers or {}
        # An error the endpoint itself decided (e.g. a repeated identifier) is saved under the
        # idempotency key like a success; validation errors are not.
        self.saved = saved


def missing(name: str) -> StripeApiError:
    return StripeApiError(400, f"Missing required param: {name}.", param=name)


def no_such(kind: str, object_id: str, param: str = "id") -> StripeApiError:
    return StripeApiError(404, f"No such {kind}: '{object_id}'", param=param, code="resource_missing")


def nest(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding (``payload[value]=3``, ``items[0][price]=p``) back into nested dicts; lists
    stay dicts keyed "0", "1", ... (:func:`as_list` reads them in order)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node = out
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):  # "a=1&a[b]=2": the later, nested form wins
                nxt = node[part] = {}
            node = nxt
        if parts:
            node[parts[-1]] = value
    return out


def as_list(value: Any) -> list[Any]:
    """A form-encoded list (``{"0": ..., "1": ...}``), a single value, or nothing, as a list."""
    if value is None or value == "":
        return []
    if isinstance(value, dict) and all(k.isdigit() for k in value):
        return [value[k] for k in sorted(value, key=int)]
    return value if isinstance(value, list) else [value]
