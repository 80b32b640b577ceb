"""The alert policy: an editable TOML file (``data/policy.toml``) overlaid by an operator's file.

It holds what the domain reference gives as defaults rather than law: `for` and clear durations per
domain, hysteresis margins, baseline windows, the no-data level, per facility kind threshold overrides,
the workflow's time limits per level, the roles allowed to take each step, inhibition along the pipe
network and the level raise of alerts near risk sources.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lifeline.kit.catalogue import CatalogueError, Level, ThresholdRule


class RuleDefaults(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    for_s: int = Field(ge=0)
    clear_for_s: int = Field(ge=0)
    clear_margin_pct: float = Field(default=10.0, ge=0, lt=100)
    baseline_days: int = Field(default=7, ge=1, le=60)
    baseline_min_days: int = Field(default=3, ge=1, le=60)
    no_data_level: Level = Level.IV
    no_data_enabled: bool = True


class DomainDurations(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    for_s: int | None = Field(default=None, ge=0)
    clear_for_s: int | None = Field(default=None, ge=0)


class Limits(BaseModel):
    """Time limits of one level's workflow steps, seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    verify_s: int = Field(gt=0)
    dispatch_s: int = Field(gt=0)
    on_site_s: int = Field(gt=0)
    close_s: int = Field(gt=0)


class Override(ThresholdRule):
    """Thresholds of one quantity and measure for every facility of a kind."""

    facility_kind: str
    quantity: str


class Matcher(BaseModel):
    """Which alerts an inhibition rule takes as source or target; an empty list matches anything."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    quantity: tuple[str, ...] = ()
    measure: tuple[str, ...] = ()
    facility_kind: tuple[str, ...] = ()
    rule_id: tuple[str, ...] = ()
    # The alert's level must be this one or more severe (I is the most severe).
    min_level: Level = Level.IV

    def matches(self, alert: Mapping[str, Any], *, check_level: bool = True) -> bool:
        return (
            (not self.quantity or alert["quantity"] in self.quantity)
            and (not self.measure or alert["measure"] in self.measure)
            and (not self.facility_kind or alert["facility_kind"] in self.facility_kind)
            and (not self.rule_id or alert["rule_id"] in self.rule_id)
            and (not check_level or Level(alert["level"]).severity >= self.min_level.severity)
        )


class Inhibit(BaseModel):
    """Like Alertmanager's ``inhibit_rules``, along the pipe network: an open, active alert matching
    ``source`` suppresses the alerts matching ``target`` on facilities 1..``max_depth`` links downstream."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    source: Matcher
    target: Matcher
    direction: Literal["downstream"] = "downstream"
    max_depth: int = Field(default=10, ge=1, le=100)


class RiskRaise(BaseModel):
    """A risk source near the facility raises a new or changed alert's level by one (never above I)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    # Risk sources of this grade or more severe count (grade I is the most severe).
    min_grade: Level = Level.IV
    # Near = named in the risk source's facility_codes, or (when > 0) within this many metres of the
    # facility's geometry; 0 turns the distance test off.
    max_distance_m: float = Field(default=0.0, ge=0, le=10_000)


class Policy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = 1
    utc_offset_h: int = Field(default=8, ge=-12, le=14)
    defaults: RuleDefaults
    domains: dict[str, DomainDurations] = Field(default_factory=dict)
    limits: dict[Level, Limits]
    roles: dict[str, tuple[str, ...]]
    override: tuple[Override, ...] = ()
    inhibit: tuple[Inhibit, ...] = ()
    risk: RiskRaise = RiskRaise()

    def durations(self, domain: str) -> tuple[int, int]:
        """(for_s, clear_for_s) of a domain's threshold rules."""
        d = self.domains.get(domain)
        for_s = d.for_s if d and d.for_s is not None else self.defaults.for_s
        clear_s = d.clear_for_s if d and d.clear_for_s is not None else self.defaults.clear_for_s
        return for_s, clear_s

    def overrides_for(self, facility_kind: str, quantity: str) -> list[Override]:
        return [o for o in self.override if o.facility_kind == facility_kind and o.quantity == quantity]


def _merge(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in own.items():
        if key in ("override", "inhibit"):
            out[key] = [*base.get(key, []), *value]
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = _merge(base[key], value)
        else:
            out[key] = value
    return out


def _parse(doc: dict[str, Any], source: str) -> Policy:
    try:
        policy = Policy.model_validate(doc)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise CatalogueError(f"{source}: {details}") from exc
    if set(policy.limits) != set(Level):
        raise CatalogueError(f"{source}: limits must name every level I, II, III, IV")
    return policy


def _read(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{source}: not valid TOML: {exc}") from exc


@functools.cache
def _packaged_doc() -> dict[str, Any]:
    text = resources.files("lifeline.alerts").joinpath("data/policy.toml").read_text(encoding="utf-8")
    return _read(text, "lifeline.alerts:data/policy.toml")


def load_policy(path: Path | None = None) -> Policy:
    """The packaged policy, overlaid by an operator's file when given."""
    doc = _packaged_doc()
    source = "lifeline.alerts:data/policy.toml"
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CatalogueError(f"{path}: cannot read the alert policy: {exc}") from exc
        doc = _merge(doc, _read(text, str(path)))
        source = str(path)
    return _parse(doc, source)
