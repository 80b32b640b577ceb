"""Census coverage: per domain (facility kind) and region, how much of the census is watched.

Three figures, each a subset of the one before: facilities **registered** (in the census: not retired),
**monitored** (at least one active sensor), **reporting** (at least one of those sensors was heard from in
the last day). The first two come from this service's tables; the third needs ingest, which knows when
each sensor was last heard of (see ``telemetry.py``). When ingest cannot tell, the first two are still
answered and the third is marked unknown with the reason, instead of failing the whole answer: these
figures feed evaluation, where a partial answer that says what is missing beats none.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from lifeline.kit import i18n
from lifeline.kit.api import require_any_role, scope_prefix
from lifeline.kit.auth import Principal
from lifeline.kit.catalogue import Domain
from lifeline.kit.db import Database
from lifeline.kit.peer import PeerChannel
from lifeline.kit.problems import ProblemError
from lifeline.kit.runtime import Service

from ..service import READER_ROLES
from . import repository
from .telemetry import IngestStatus, TelemetryUnavailable

DAY_MS = 86_400_000

i18n.register(
    {
        "coverage.domain.gas": {"zh-CN": "燃气", "en": "gas"},
        "coverage.domain.water": {"zh-CN": "供水", "en": "water supply"},
        "coverage.domain.drainage": {"zh-CN": "排水", "en": "drainage"},
        "coverage.domain.heating": {"zh-CN": "供热", "en": "heating"},
        "coverage.domain.bridge": {"zh-CN": "桥梁", "en": "bridges"},
        "coverage.domain.tunnel": {"zh-CN": "隧道", "en": "tunnels"},
        "coverage.domain.utility_tunnel": {"zh-CN": "综合管廊", "en": "utility tunnels"},
        "coverage.domain.road": {"zh-CN": "道路", "en": "roads"},
        "coverage.domain.building": {"zh-CN": "房屋", "en": "buildings"},
        "coverage.ingest_failed": {
            "zh-CN": "接入服务 ingest 无法提供传感器最近上报时间（{detail}），近一日有读数的设施数未知",
            "en": "the ingest service could not tell when sensors last reported ({detail}); "
            "facilities with readings in the last day are unknown",
        },
        "coverage.no_token": {
            "zh-CN": "无法取得访问接入服务 ingest 的服务令牌（{detail}），近一日有读数的设施数未知",
            "en": "no service token for the ingest service ({detail}); facilities with readings in the last day "
            "are unknown",
        },
        "coverage.outside_scope": {
            "zh-CN": "无权查看区域 {region} 的覆盖统计",
            "en": "not allowed to see the coverage of region {region}",
        },
    }
)

LastSeen = Callable[[], Awaitable[dict[str, int]]]


def _figures(registered: int, monitored: int, reporting: int | None) -> dict[str, Any]:
    def share(n: int | None) -> float | None:
        return None if n is None or registered == 0 else round(n / registered, 4)

    return {
        "registered": registered,
        "monitored": monitored,
        "reporting": reporting,
        "monitored_ratio": share(monitored),
        "reporting_ratio": share(reporting),
    }


class CoverageService:
    """Coverage figures of the census, region-scoped like every other read of assets."""

    def __init__(self, *, db: Database, last_seen: LastSeen, now_ms: Callable[[], int] | None = None) -> None:
        self.db = db
        self.last_seen = last_seen
        self.now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)

    async def coverage(self, *, principal: Principal, region: str | None, lang: str) -> dict[str, Any]:
        """Figures per domain (with its regions) and in total, for ``region`` (default: the caller's)."""
        require_any_role(principal, READER_ROLES)
        scope = region or principal.region
        if scope is None or not principal.sees(scope):
            raise ProblemError(403, detail="coverage.outside_scope", params={"region": scope or "—"})
        prefix = scope_prefix(scope)
        async with self.db.transaction(readonly=True) as session:
            registered = await repository.registered(session=session, prefix=prefix)
            sensors = await repository.active_sensors(session=session, prefix=prefix)
        now = self.now_ms()
        readings: dict[str, Any] = {"known": True, "since_ms": now - DAY_MS}
        reporting_codes: set[str] | None = set()
        try:
            seen = await self.last_seen()
        except TelemetryUnavailable as exc:
            readings = {"known": False, "reason": i18n.t(exc.reason, lang, detail=exc.detail)}
            reporting_codes = None
        else:
            since = now - DAY_MS
            reporting_codes = {code for _, _, code, sid in sensors if seen.get(sid, 0) >= since}
        monitored: dict[tuple[str, str], set[str]] = {}
        reporting: dict[tuple[str, str], int] = {}
        for kind, reg, code, _ in sensors:
            monitored.setdefault((kind, reg), set()).add(code)
        for key, codes in monitored.items():
            reporting[key] = len(codes & reporting_codes) if reporting_codes is not None else 0
        known = reporting_codes is not None
        domains: dict[str, dict[str, Any]] = {}
        for kind, reg, count in sorted(registered):
            d = domains.setdefault(kind, {"regions": [], "sums": [0, 0, 0]})
            m, r = len(monitored.get((kind, reg), ())), reporting.get((kind, reg), 0)
            d["regions"].append({"region": reg, **_figures(count, m, r if known else None)})
            d["sums"] = [d["sums"][0] + count, d["sums"][1] + m, d["sums"][2] + r]
        order = {str(k): i for i, k in enumerate(Domain)}
        out_domains = []
        total = [0, 0, 0]
        for kind in sorted(domains, key=lambda k: (order.get(k, len(order)), k)):
            reg_n, mon_n, rep_n = domains[kind]["sums"]
            total = [total[0] + reg_n, total[1] + mon_n, total[2] + rep_n]
            out_domains.append(
                {
                    "domain": kind,
                    "label": i18n.t(f"coverage.domain.{kind}", lang),
                    **_figures(reg_n, mon_n, rep_n if known else None),
                    "regions": domains[kind]["regions"],
                }
            )
        return {
            "region": scope,
            "as_of_ms": now,
            "readings": readings,
            "total": _figures(total[0], total[1], total[2] if known else None),
            "domains": out_domains,
        }


def coverage_service(app: Service) -> CoverageService:
    """The coverage service of an assets app, asking its instance's ingest with the instance's service client."""
    ingest = IngestStatus(PeerChannel(app.settings.ingest_grpc, app.instance))  # type: ignore[attr-defined]
    app.background.append(ingest)  # closes its channel and token client when the app stops
    return CoverageService(db=app.db, last_seen=ingest.last_seen)
