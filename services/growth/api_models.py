"""Request and answer bodies of the growth API, as pydantic models: they are the OpenAPI document."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorBody(BaseModel):
    code: str = Field(description="Machine-readable: invalid_parameter, unauthorized, flag_not_found, ...")
    message: str
    request_id: str


class FlagsDocument(BaseModel):
    """Every flag, for local evaluation (sdk/plg_sdk/flags.py compiles it)."""

    model_config = ConfigDict(extra="allow")
    revision: int = Field(description="Id of the last change; the SSE stream's event id.")
    segments: dict[str, Any]
    flags: list[dict[str, Any]]


class EvaluationContext(BaseModel):
    """Who is asking. Any attribute may be used by rules; these are the conventional ones."""

    model_config = ConfigDict(extra="allow")
    targetingKey: str | None = Field(  # OpenFeature's own name
        default=None, description="OpenFeature's targeting key: taken as user_id when user_id is absent."
    )
    user_id: str | None = None
    anonymous_id: str | None = None
    customer_id: str | None = Field(default=None, description="Needed for exposure events.")
    plan: str | None = None
    country: str | None = None


class EvaluateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flag_key: str | None = Field(default=None, description="One flag; omit (and flag_keys) for every flag.")
    flag_keys: list[str] | None = Field(default=None, max_length=500)
    context: EvaluationContext = Field(default_factory=EvaluationContext)
    default_value: Any = Field(default=None, description="Answered with reason ERROR when evaluation fails.")
    type: Literal["boolean", "string", "number", "integer", "object"] | None = Field(
        default=None, description="Expected value type: a flag of another type answers TYPE_MISMATCH."
    )


class FlagMetadata(BaseModel):
    version: int | None
    sticky: bool


class EvaluationDetails(BaseModel):
    """OpenFeature's evaluation details."""

    flag_key: str
    value: Any
    variant: str | None
    reason: str = Field(
        description="STATIC, TARGETING_MATCH, SPLIT, DEFAULT, DISABLED, PREREQUISITE_FAILED, ERROR"
    )
    error_code: str | None = Field(description="FLAG_NOT_FOUND, TYPE_MISMATCH, GENERAL when reason is ERROR")
    error_message: str | None
    flag_metadata: FlagMetadata


class EvaluationList(BaseModel):
    revision: int
    flags: list[EvaluationDetails]


class FlagDefinition(BaseModel):
    """A flag as in deploy/config/flags.yaml without its key (docs/growth.md). Whether it is valid also
    depends on the other flags (prerequisites) and on its own parts agreeing (variants named by rules):
    those checks answer 422 ``invalid_flag`` with every problem."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool | None = None
    description: str | None = None
    variants: dict[str, Any] | None = None
    off_variant: str | None = None
    default: dict[str, Any] | None = None
    rollout: float | None = None
    rules: list[dict[str, Any]] | None = None
    stickiness: list[str] | str | None = None
    salt: str | None = None
    sticky: bool | None = None
    prerequisites: list[dict[str, Any]] | None = None
    tags: list[str] | None = None


class AdminFlag(BaseModel):
    key: str
    version: int
    source: Literal["config", "admin"]
    updated_by: str
    definition: dict[str, Any]


class FlagChange(BaseModel):
    change_id: int
    flag_key: str
    version: int
    action: Literal["seed", "config", "create", "update", "delete"]
    actor: str
    changed_at: str
    request_id: str | None
    before: Any
    after: Any


class FlagHistory(BaseModel):
    flag_key: str
    changes: list[FlagChange]


class FlagWritten(BaseModel):
    key: str
    version: int
    created: bool
    revision: int
