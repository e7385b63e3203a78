"""The request and response models of CONTRACT.md §1.

spectree (app/openapi.py) validates requests and responses against them and writes the
OpenAPI document from them. An id is checked by `supervisor.keys.validate_id` and documented
with `ID_SCHEMA_PATTERN`; workload states are the domain's `WorkloadStatus`.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PlainValidator,
    RootModel,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import DEFAULT_REF_TEMPLATE, GenerateJsonSchema, JsonSchemaMode
from pydantic.json_schema import SkipJsonSchema as Absent
from pydantic_core import PydanticCustomError, core_schema

from supervisor.errors import InvalidInput
from supervisor.keys import ID_MAX_CHARS, ID_RULE, ID_SCHEMA_PATTERN, validate_id
from supervisor.models import WorkloadStatus

USER_COUNT = re.compile(r"[0-9]{1,6}")
USER_COUNT_CEILING = 999_999  # the most USER_COUNT lets a caller write
USER_COUNT_DIGITS = "user_count must be a whole number written with the digits 0-9"
ID_ERROR, USER_COUNT_ERROR = "invalid_id", "invalid_user_count"
# Errors whose message is a whole sentence naming the field: the 400's `details` as it is.
WORDED_ERRORS = frozenset({ID_ERROR, USER_COUNT_ERROR})


class OpenAPI30(GenerateJsonSchema):
    """pydantic writes JSON Schema 2020-12; the bundled Swagger UI (4.x) reads OpenAPI 3.0,
    which has `enum` but no `const`, `nullable` but no `"type": "null"`."""

    def literal_schema(self, schema: core_schema.LiteralSchema) -> dict[str, Any]:
        values = [v.value if isinstance(v, Enum) else v for v in schema["expected"]]
        generated = super().literal_schema(schema)
        generated.pop("const", None)
        return {**generated, "enum": values}

    def nullable_schema(self, schema: core_schema.NullableSchema) -> dict[str, Any]:
        inner = self.generate_inner(schema["schema"])
        if "$ref" in inner:
            return {"allOf": [inner], "nullable": True}
        return {**inner, "nullable": True}

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> dict[str, Any]:
        generated = super().default_schema(schema)
        if generated.get("default", ...) is None:  # an optional field is absent, never null
            del generated["default"]
        return generated


class _OpenAPI30Schema:
    @classmethod
    def model_json_schema(
        cls,
        by_alias: bool = True,
        ref_template: str = DEFAULT_REF_TEMPLATE,
        schema_generator: type[GenerateJsonSchema] = OpenAPI30,
        mode: JsonSchemaMode = "validation",
        **kwargs: Any,
    ) -> dict[str, Any]:
        return super().model_json_schema(  # type: ignore[misc]
            by_alias=by_alias,
            ref_template=ref_template,
            schema_generator=schema_generator,
            mode=mode,
            **kwargs,
        )


class Model(_OpenAPI30Schema, BaseModel):
    """A request model: fields it does not know are ignored."""


class Body(_OpenAPI30Schema, BaseModel):
    """A response body: exactly these fields (`additionalProperties: false`)."""

    model_config = ConfigDict(extra="forbid")


# --- ids and counts ----------------------------------------------------------------------


def _id(value: object, info: ValidationInfo) -> str:
    try:
        return validate_id(info.field_name or "id", value)
    except InvalidInput as exc:
        raise PydanticCustomError(ID_ERROR, str(exc)) from exc


def _user_count(value: object) -> int:
    if not isinstance(value, str) or not USER_COUNT.fullmatch(value):
        raise PydanticCustomError(USER_COUNT_ERROR, USER_COUNT_DIGITS)
    return int(value)


Id = Annotated[
    str,
    PlainValidator(_id),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": ID_SCHEMA_PATTERN,
            "minLength": 1,
            "maxLength": ID_MAX_CHARS,
            "description": ID_RULE,
        }
    ),
]
# The range (1 to MAX_USER_COUNT) is the domain's check; the document adds the maximum.
UserCountInPath = Annotated[
    int,
    PlainValidator(_user_count),
    WithJsonSchema({"type": "integer", "minimum": 1}),
]
Percentage = Annotated[float, Field(ge=0, le=100, json_schema_extra={"example": 50.0})]


# --- requests ----------------------------------------------------------------------------


class _Fields(Model):
    @model_validator(mode="before")
    @classmethod
    def _not_an_object_has_no_fields(cls, data: object) -> object:
        return data if isinstance(data, dict) else {}


class StartWorkloadForm(_Fields):
    """A form (or, from a lenient client, a JSON object)."""

    customer_id: Id = Field(json_schema_extra={"example": "customer-42"})
    object_id: Id = Field(json_schema_extra={"example": "object-7"})


class CustomerForm(_Fields):
    """A form (or, from a lenient client, a JSON object)."""

    customer_id: Id = Field(json_schema_extra={"example": "customer-42"})


class CustomerQuery(Model):
    customer_id: Id = Field(json_schema_extra={"example": "customer-42"})


class StatusQuery(CustomerQuery):
    last: Literal["completed"] | Absent[None] = Field(
        None,
        description=(
            "`completed`: the customer's last completed workload, even when a later one "
            "failed or was stopped (a 404 when none is kept). Without it: the latest one."
        ),
    )


class PathParameters(Model):
    """Every path parameter of the API, each checked where a route has it. `user_count` comes
    first: of two bad parameters, it is the one the error names."""

    user_count: UserCountInPath | Absent[None] = Field(
        None,
        description="Whole number of users wanted, 1 to `MAX_USER_COUNT`. Anything else is a 400.",
        json_schema_extra={"example": 5},
    )
    customer_id: Id | Absent[None] = Field(None, json_schema_extra={"example": "customer-42"})


PATH_PARAMETERS: dict[str, dict[str, Any]] = PathParameters.model_json_schema()["properties"]


# --- responses ---------------------------------------------------------------------------


class Error(Body):
    """Every error body. `details` says what was wrong, when there is more."""

    message: str = Field(json_schema_extra={"example": "Invalid input"})
    details: str | Absent[None] = Field(
        None, json_schema_extra={"example": "customer_id is required"}
    )


class Alive(Body):
    message: Literal["Session Supervisor Service is active"]


class WorkloadStarted(Body):
    message: Literal["Workload started"]


class WorkloadStopped(Body):
    message: Literal["Workload stopped and deleted"]


class DegradedPeer(Body):
    operation: str
    status: int | None = Field(description="The peer's HTTP status; null when unreachable.")
    since: int = Field(description="Unix time of the failure.")


FAILURE_REASON = "Why the workload failed; present only for a failed workload."
DEGRADED = "Peers an active workload waits on after a recent failure; absent when all are well."
STATES = (
    "`initialized` while the .blend file is read, `running` while frames are rendered, "
    "`completed` when every frame is in, `failed` (see `failure_reason`), `stopped`."
)


class StatusCounters(Body):
    workload_status: WorkloadStatus = Field(description=STATES)
    total_frames: NonNegativeInt = Field(json_schema_extra={"example": 250})
    completed_frames: NonNegativeInt = Field(json_schema_extra={"example": 125})
    completion_percentage: Percentage
    stored_frames: NonNegativeInt | Absent[None] = Field(
        None, description="Frames in the final store (as completed_frames)."
    )
    recorded_frames: NonNegativeInt | Absent[None] = Field(
        None,
        description=(
            "Frames the catalog has confirmed. The workload is `completed` only once this "
            "is total_frames."
        ),
    )
    failure_reason: str | Absent[None] = Field(None, description=FAILURE_REASON)
    degraded_peers: dict[str, DegradedPeer] | Absent[None] = Field(None, description=DEGRADED)


class WorkloadStatusBody(Body):
    message: Literal["Workload status"]
    status: StatusCounters


EtaSeconds = Annotated[float | None, Field(ge=0)]


class WorkloadProgress(Body):
    total_frames: NonNegativeInt = Field(json_schema_extra={"example": 250})
    completed_frames: NonNegativeInt = Field(json_schema_extra={"example": 125})
    remaining_frames: NonNegativeInt = Field(json_schema_extra={"example": 125})
    progress_percentage: Percentage
    workload_status: WorkloadStatus = Field(description=STATES)
    active_users: NonNegativeInt = Field(json_schema_extra={"example": 2})
    frame_mapping: dict[str, str] = Field(
        description=(
            "Each frame still assigned (key: the frame number as a string) to the user "
            "holding it. At most `PROGRESS_MAPPING_LIMIT` entries, lowest frames first."
        ),
        json_schema_extra={"example": {"126": "user-123", "127": "user-456"}},
    )
    frame_mapping_truncated: bool = Field(
        description="True when more frames are assigned than `frame_mapping` lists."
    )
    eta_seconds: EtaSeconds = Field(
        description=(
            "Seconds until the workload is expected to have every frame stored, from now; "
            "null unless `eta_basis` is `measured` (0 once completed)."
        ),
        json_schema_extra={"example": 200.0},
    )
    eta_low_seconds: EtaSeconds = Field(
        description="The low end of the ETA's 80 % interval.",
        json_schema_extra={"example": 170.0},
    )
    eta_high_seconds: EtaSeconds = Field(
        description="The high end of the ETA's 80 % interval.",
        json_schema_extra={"example": 250.0},
    )
    eta_basis: Literal["measured", "warming-up", "no-users", "ended"] = Field(
        description=(
            "`measured`: from the active users' frame times; `warming-up`: too few frames "
            "timed yet to say; `no-users`: no user is rendering; `ended`: the workload is "
            "over (0 when completed)."
        )
    )
    failure_reason: str | Absent[None] = Field(None, description=FAILURE_REASON)
    degraded_peers: dict[str, DegradedPeer] | Absent[None] = Field(None, description=DEGRADED)


class UserCount(Body):
    user_count: int = Field(ge=1, description="How many users the workload wants.")
    session_id: str = Field(description="The session id the User Manager knows the workload by.")
    active_users: NonNegativeInt = Field(description="How many users it has now.")


class UserCountUpdated(Body):
    message: Literal["User count updated successfully"]
    new_user_count: int = Field(ge=1, json_schema_extra={"example": 5})


class SessionOverview(Body):
    customer_id: str = Field(json_schema_extra={"example": "customer-42"})
    object_id: str = Field(json_schema_extra={"example": "object-7"})
    session_routing_key: str = Field(
        json_schema_extra={"example": "SESSION_SUPERVISOR_6f1c0f3e2b9d4a7c8e5f0a1b2c3d4e5f"}
    )
    session_id: str = Field(json_schema_extra={"example": "6f1c0f3e2b9d4a7c8e5f0a1b2c3d4e5f"})
    number_of_users: NonNegativeInt
    session_status: WorkloadStatus = Field(
        description="The workload's status; `stopped` right after a stop."
    )


class NoSession(Body):
    """The original's answer for a customer without a session (a 200)."""

    error: str = Field(json_schema_extra={"example": "No active session for customer_id: x"})


class OverviewAnswer(_OpenAPI30Schema, RootModel[SessionOverview | NoSession]):
    """The overview, or the original's error object."""


class Overviews(_OpenAPI30Schema, RootModel[list[SessionOverview]]):
    """One overview per active workload."""


# --- operations (app/ops.py) ---------------------------------------------------------------


class Health(Body):
    status: Literal["alive"]


class Readiness(Body):
    status: Literal["ready", "not-ready"]
    checks: dict[str, str] = Field(
        description="Each dependency (`postgres`, `redis`, `broker`, and "
        "`user_manager_broker` when it is another broker): `ok`, or `unreachable: <error "
        "type>`."
    )
