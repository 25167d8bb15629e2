"""Building blocks shared by the ``shoal.dev/v1alpha1`` kinds.

- :class:`ApiModel`, the base of every spec and status model: camelCase on the wire,
  snake_case in Python, unknown fields rejected, and cross-field :class:`Rule` s that are
  enforced twice from one definition (as CEL ``x-kubernetes-validations`` by the API server,
  and as a Pydantic check in Python, so both judge an object alike).
- Constrained string types (names, decimal money, fractions, quantities, source URIs). The
  API carries no floats: money and fractions are decimal strings with a pattern.
- :class:`Condition`, the Kubernetes condition shape, and :class:`ObjectMeta`.

Patterns are written for both regex engines that read them (Go's RE2 in the API server,
Rust's regex in pydantic-core): ASCII classes only, no look-around.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel

GROUP = "shoal.dev"
VERSION = "v1alpha1"

# --- constrained strings -------------------------------------------------------------------

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: An environment variable name.
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
#: Non-negative decimal with at most four places, no sign, no exponent: "0", "2.50", "1200".
MONEY = r"^(0|[1-9][0-9]{0,5})(\.[0-9]{1,4})?$"
#: A decimal fraction in [0, 1] with at most four places: "0", "0.5", "1", "1.00".
FRACTION = r"^(0(\.[0-9]{1,4})?|1(\.0{1,4})?)$"
#: A strictly positive decimal below 1000 with at most four places: "0.05", "1", "12.5".
POSITIVE_DECIMAL = r"^(0\.[0-9]{0,3}[1-9]|[1-9][0-9]{0,2}(\.[0-9]{1,4})?)$"
#: A positive Kubernetes resource quantity: "500m", "4", "16Gi", "1.5".
QUANTITY = r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)([KMGTPE]i|[mkMGTPE])?$"
_PATH = r"[A-Za-z0-9._~/@+=-]+"
#: Where model weights come from: Hugging Face repository, object store, PVC path, local file,
#: or a file inside an installed Python package (pkg://<import package>/<path inside it>).
SOURCE_URI = (
    r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._/-]*"
    r"|(s3|gs)://[a-z0-9][a-z0-9.-]*[a-z0-9]/"
    + _PATH
    + r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/"
    + _PATH
    + r"|file:///"
    + _PATH
    + r"|pkg://[A-Za-z_][A-Za-z0-9_]*/"
    + _PATH
    + r")$"
)
HTTP_URL = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/%+=-]*)?$"

Name = Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=DNS_LABEL)]
ObjectName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
Money = Annotated[str, StringConstraints(max_length=12, pattern=MONEY)]
Fraction = Annotated[str, StringConstraints(max_length=6, pattern=FRACTION)]
PositiveDecimal = Annotated[str, StringConstraints(max_length=8, pattern=POSITIVE_DECIMAL)]
Quantity = Annotated[str, StringConstraints(max_length=32, pattern=QUANTITY)]
SourceUri = Annotated[str, StringConstraints(max_length=512, pattern=SOURCE_URI)]
HttpUrl = Annotated[str, StringConstraints(max_length=512, pattern=HTTP_URL)]

_QUANTITY = re.compile(QUANTITY)
_QUANTITY_FACTORS: dict[str, Decimal] = {
    "": Decimal(1), "m": Decimal("0.001"), "k": Decimal(10) ** 3, "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9, "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}  # fmt: skip


def parse_quantity(value: str) -> Decimal:
    """A Kubernetes quantity ("500m", "4", "16Gi") as a number (the :data:`QUANTITY` pattern)."""
    match = _QUANTITY.match(value)
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return Decimal(match.group(1)) * _QUANTITY_FACTORS[match.group(3) or ""]


def decimal(value: str) -> Decimal:
    """Parse one of the API's decimal strings (money, fractions) without going through float."""
    return Decimal(value)


# --- cross-field rules -----------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A cross-field rule, written once and enforced in two places.

    ``cel`` goes into the CRD as an ``x-kubernetes-validations`` entry (the API server checks
    it at apply time); ``check`` is the same predicate in Python (Pydantic checks it). A
    property-based test holds the two to the same verdicts on generated objects.
    """

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None
    reason: str | None = None
    message_expression: str | None = None

    def to_schema(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.message_expression:
            out["messageExpression"] = self.message_expression
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


def _add_rules_to_schema(schema: dict[str, Any], cls: type[Any]) -> None:
    rules: tuple[Rule, ...] = getattr(cls, "cel_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [r.to_schema() for r in rules]


class ApiModel(BaseModel):
    """Base of every spec and status model: camelCase aliases, no unknown fields, CEL rules."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra=_add_rules_to_schema,
    )

    #: Cross-field rules of this object; see :class:`Rule`.
    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        failed = [r.message for r in type(self).cel_rules if not r.check(self)]
        for name, info in type(self).model_fields.items():
            extra = info.json_schema_extra
            if isinstance(extra, dict) and extra.get("x-kubernetes-list-type") == "map":
                key = str(extra["x-kubernetes-list-map-keys"][0])  # type: ignore[index]
                items = getattr(self, name)
                if not unique_keys(items, key):
                    failed.append(f"{info.alias or name}: each {key} must be unique")
        if failed:
            raise ValueError("; ".join(failed))
        return self

    def to_k8s(self) -> dict[str, Any]:
        """The object as the API server wants it: camelCase keys, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def list_map(key: str = "name") -> dict[str, Any]:
    """Schema extras that make a list a map keyed by ``key`` (the API server rejects duplicates)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]}


def unique_keys(items: list[Any], key: str) -> bool:
    """The Python side of a list-map: keys are unique."""
    keys = [getattr(i, key) for i in items]
    return len(keys) == len(set(keys))


# --- metadata and conditions -----------------------------------------------------------------


class ObjectMeta(BaseModel):
    """The parts of Kubernetes ``metadata`` Shoal reads; everything else is kept as is."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str = Field(description="Object name, unique within its namespace.")
    namespace: str | None = Field(default=None, description="Namespace of the object.")
    uid: str | None = Field(default=None, description="Unique ID assigned by the API server.")
    generation: int | None = Field(default=None, description="Spec generation.")
    resource_version: str | None = Field(default=None, description="Version for concurrency.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")


class ConditionStatus(StrEnum):
    """Whether a condition holds."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """One observation of an object's state, in the standard Kubernetes condition shape."""

    type: Annotated[
        str,
        StringConstraints(
            max_length=316,
            pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
            r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        ),
    ] = Field(description="Type of condition in CamelCase, e.g. Ready, Progressing, Degraded.")
    status: ConditionStatus = Field(description="Status of the condition: True, False or Unknown.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the condition was set for."
    )
    last_transition_time: datetime = Field(
        description="Last time the condition changed from one status to another."
    )
    reason: Annotated[
        str,
        StringConstraints(
            min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
        ),
    ] = Field(description="One-word CamelCase reason for the condition's last transition.")
    message: Annotated[str, StringConstraints(max_length=32768)] = Field(
        default="", description="Human-readable details about the transition."
    )
