"""Alerts' view of the pipe network and the risk-source register (from assets' links and risk sources).

Pure and in memory: the service keeps the documents in ``ctx_links`` / ``ctx_risks`` and hands them
here. ``Network`` answers which facilities lie up to N links downstream or upstream of another (links
run upstream ``from_code`` → downstream ``to_code``); ``RiskRegister`` which risk source is near a
facility (named in its ``facility_codes``, or within a distance of the facility's geometry).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from lifeline.kit.catalogue import Level

_LEVELS = {"IV": Level.IV, "III": Level.III, "II": Level.II, "I": Level.I}
_EARTH_M = 6_371_008.8


def raised_by_one(level: Level) -> Level:
    """IV → III → II → I; I stays I."""
    return {Level.IV: Level.III, Level.III: Level.II, Level.II: Level.I, Level.I: Level.I}[level]


class Network:
    """Directed links upstream → downstream; retired links are not part of it."""

    def __init__(self) -> None:
        self.links: dict[str, tuple[str, str]] = {}
        self._down: dict[str, set[str]] | None = None
        self._up: dict[str, set[str]] | None = None

    def set_link(self, doc: dict[str, Any]) -> None:
        link_id = str(doc.get("id", ""))
        src, dst = str(doc.get("from_code", "")), str(doc.get("to_code", ""))
        if doc.get("retired") or doc.get("change") == "retired" or not (src and dst):
            self.links.pop(link_id, None)
        else:
            self.links[link_id] = (src, dst)
        self._down = self._up = None

    def _index(self) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        if self._down is None or self._up is None:
            down: dict[str, set[str]] = {}
            up: dict[str, set[str]] = {}
            for src, dst in self.links.values():
                down.setdefault(src, set()).add(dst)
                up.setdefault(dst, set()).add(src)
            self._down, self._up = down, up
        return self._down, self._up

    def downstream(self, code: str, max_depth: int) -> dict[str, int]:
        """Facilities 1..max_depth links downstream of ``code`` → their distance in links."""
        return _walk(self._index()[0], code, max_depth)

    def upstream(self, code: str, max_depth: int) -> dict[str, int]:
        """Facilities 1..max_depth links upstream of ``code`` → their distance in links."""
        return _walk(self._index()[1], code, max_depth)


def _walk(edges: dict[str, set[str]], start: str, max_depth: int) -> dict[str, int]:
    seen: dict[str, int] = {}
    queue = deque([(start, 0)])
    while queue:
        code, depth = queue.popleft()
        if depth == max_depth:
            continue
        for nxt in edges.get(code, ()):
            if nxt != start and nxt not in seen:  # loops in the network end the walk
                seen[nxt] = depth + 1
                queue.append((nxt, depth + 1))
    return seen


@dataclass(frozen=True, slots=True)
class Risk:
    id: str
    grade: Level
    facility_codes: frozenset[str]
    points: tuple[tuple[float, float], ...]  # (lon, lat)


def points(geometry: Any) -> tuple[tuple[float, float], ...]:
    """The (lon, lat) vertices of an assets geometry document; () when it has none."""
    coords = geometry.get("coordinates") if isinstance(geometry, dict) else None
    out = []
    for c in coords if isinstance(coords, list) else []:
        if isinstance(c, dict):
            try:
                out.append((float(c.get("lon", 0.0)), float(c.get("lat", 0.0))))
            except (TypeError, ValueError):
                continue
    return tuple(out)


def _grade(value: Any) -> Level | None:
    name = str(value or "").upper().removeprefix("WARNING_LEVEL_")
    return _LEVELS.get(name.split("_")[0])


class RiskRegister:
    """Current (not retired) risk sources with a grade."""

    def __init__(self) -> None:
        self.risks: dict[str, Risk] = {}

    def set_risk(self, doc: dict[str, Any]) -> None:
        risk_id = str(doc.get("id", ""))
        grade = _grade(doc.get("grade"))
        if doc.get("retired") or doc.get("change") == "retired" or grade is None:
            self.risks.pop(risk_id, None)
            return
        self.risks[risk_id] = Risk(
            id=risk_id,
            grade=grade,
            facility_codes=frozenset(str(c) for c in doc.get("facility_codes") or []),
            points=points(doc.get("geometry")),
        )

    def near(
        self, facility_code: str, facility_points: tuple[tuple[float, float], ...], *, min_grade: Level, max_m: float
    ) -> Risk | None:
        """The most severe risk source (then the lowest id) of ``min_grade`` or worse near the facility."""
        best: Risk | None = None
        for risk in self.risks.values():
            if risk.grade.severity < min_grade.severity:
                continue
            named = facility_code in risk.facility_codes
            if not named and not (max_m > 0 and _within(risk.points, facility_points, max_m)):
                continue
            if best is None or (risk.grade.severity, best.id) > (best.grade.severity, risk.id):
                best = risk
        return best


def _within(a: tuple[tuple[float, float], ...], b: tuple[tuple[float, float], ...], max_m: float) -> bool:
    """Whether any vertex of one geometry lies within ``max_m`` metres of the other (points or lines)."""
    if not a or not b:
        return False
    return any(_point_to_line(p, b) <= max_m for p in a) or any(_point_to_line(p, a) <= max_m for p in b)


def _point_to_line(p: tuple[float, float], line: tuple[tuple[float, float], ...]) -> float:
    """Metres from a point to a point or polyline, on a local flat projection (fine within kilometres)."""
    lat0 = math.radians(p[1])
    kx, ky = math.cos(lat0) * math.pi / 180 * _EARTH_M, math.pi / 180 * _EARTH_M

    def xy(q: tuple[float, float]) -> tuple[float, float]:
        return (q[0] - p[0]) * kx, (q[1] - p[1]) * ky

    pts = [xy(q) for q in line]
    if len(pts) == 1:
        return math.hypot(*pts[0])
    best = math.inf
    for (x1, y1), (x2, y2) in itertools.pairwise(pts):
        dx, dy = x2 - x1, y2 - y1
        seg = dx * dx + dy * dy
        t = 0.0 if seg == 0 else max(0.0, min(1.0, -(x1 * dx + y1 * dy) / seg))
        best = min(best, math.hypot(x1 + t * dx, y1 + t * dy))
    return best
