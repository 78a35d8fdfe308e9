"""An OpenFeature provider (PyPI ``openfeature-sdk``) over the SDK's local flag evaluation.

    from openfeature import api
    from plg_sdk import FlagsClient
    from plg_sdk.openfeature import PlgProvider

    api.set_provider(PlgProvider(FlagsClient("http://127.0.0.1:8085")))
    api.get_client().get_boolean_value("new_dashboard", False, EvaluationContext("user-42", {"plan": "pro"}))

The context's ``targeting_key`` is plg's ``user_id``; its attributes are the rest of the context.
Evaluation is local and the same as the browser SDK's and the growth service's (the shared vectors in
sdk/testdata).
``openfeature-sdk`` is an optional dependency (``pip install 'plg-sdk[openfeature]'``): only this module
imports it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails
from openfeature.provider import AbstractProvider, Metadata

from plg_sdk.growth import FlagsClient

_ERRORS = {code.value: code for code in ErrorCode}


def _context(ctx: EvaluationContext | None) -> dict[str, Any]:
    if ctx is None:
        return {}
    out = dict(ctx.attributes)
    if ctx.targeting_key is not None:
        out["user_id"] = ctx.targeting_key
    return out


class PlgProvider(AbstractProvider):
    """Resolves flags with a :class:`~plg_sdk.growth.FlagsClient` (definitions kept fresh by its thread)."""

    def __init__(self, flags: FlagsClient, *, ready_timeout: float = 5.0) -> None:
        super().__init__()
        self.flags = flags
        self.ready_timeout = ready_timeout

    def get_metadata(self) -> Metadata:
        return Metadata(name="plg")

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        # Ready once the first definitions arrived (or bootstrap gave some); evaluations before that
        # answer the default with PROVIDER_NOT_READY rather than block.
        self.flags.wait_ready(self.ready_timeout)

    def shutdown(self) -> None:
        self.flags.close()

    def _resolve(
        self, key: str, default: Any, kind: str, ctx: EvaluationContext | None
    ) -> FlagResolutionDetails[Any]:
        answer = self.flags.evaluate(key, _context(ctx), default, kind)
        code = _ERRORS.get(answer.error_code or "", ErrorCode.GENERAL) if answer.error_code else None
        return FlagResolutionDetails(
            value=answer.value,
            error_code=code,
            error_message=answer.error_message,
            reason=answer.reason,
            variant=answer.variant,
            flag_metadata={"version": answer.version} if answer.version is not None else {},
        )

    def resolve_boolean_details(
        self, flag_key: str, default_value: bool, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[bool]:
        return self._resolve(flag_key, default_value, "boolean", evaluation_context)

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        return self._resolve(flag_key, default_value, "string", evaluation_context)

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        return self._resolve(flag_key, default_value, "integer", evaluation_context)

    def resolve_float_details(
        self, flag_key: str, default_value: float, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[float]:
        return self._resolve(flag_key, default_value, "number", evaluation_context)

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[Any] | Mapping[str, Any],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[Any] | Mapping[str, Any]]:
        return self._resolve(flag_key, default_value, "object", evaluation_context)
