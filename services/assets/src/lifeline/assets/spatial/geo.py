"""Distances and boxes on the sphere, the one measure every spatial answer uses on either database.

The databases only pick candidates (a bounding box that surely holds every answer); the exact test is
made here, in Python, on the stored GeoJSON, so SQLite and PostgreSQL cannot disagree at a boundary.
Distances are great-circle metres on a sphere of the mean Earth radius (CGCS2000 and WGS84 differ
from it by under 0.6 %, far less than any radius a city asks about). Lines are great-circle arcs
between their vertices.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

EARTH_RADIUS_M = 6_371_008.8
# Candidate boxes are widened by this much more than the distance asked: a great-circle arc bulges
# poleward of its vertices' box (about 30 m for a 50 km segment), and the bbox index stores float32.
_BOX_MARGIN_M = 50.0
_BOX_MARGIN_RATIO = 0.01

Position = Sequence[float]  # [lon, lat]
Box = tuple[float, float, float, float]  # min_lon, min_lat, max_lon, max_lat
Vec = tuple[float, float, float]


def vertices(geometry: dict[str, Any]) -> list[Position]:
    """The [lon, lat] vertices of a GeoJSON Point or LineString."""
    coords = geometry["coordinates"]
    return [coords] if geometry["type"] == "Point" else list(coords)


def bbox(geometry: dict[str, Any]) -> Box:
    pts = vertices(geometry)
    lons = [p[0] for p in pts]
    lats = [p[1] for p in pts]
    return min(lons), min(lats), max(lons), max(lats)


def expand(box: Box, metres: float) -> Box:
    """A box holding every point within `metres` of anything inside `box` (generously)."""
    delta = (metres * (1 + _BOX_MARGIN_RATIO) + _BOX_MARGIN_M) / EARTH_RADIUS_M
    dlat = math.degrees(delta)
    min_lon, min_lat, max_lon, max_lat = box
    top = max(abs(min_lat), abs(max_lat)) + dlat
    if top >= 90.0 or delta >= math.pi / 2:
        return -180.0, max(-90.0, min_lat - dlat), 180.0, min(90.0, max_lat + dlat)
    # Farthest a great circle of length delta strays in longitude from a point at latitude `top`.
    dlon = math.degrees(math.asin(min(1.0, math.sin(delta) / math.cos(math.radians(top)))))
    return (
        max(-180.0, min_lon - dlon),
        max(-90.0, min_lat - dlat),
        min(180.0, max_lon + dlon),
        min(90.0, max_lat + dlat),
    )


# --- great circles ----------------------------------------------------------------------------------


def _vec(p: Position) -> Vec:
    lon, lat = math.radians(p[0]), math.radians(p[1])
    c = math.cos(lat)
    return c * math.cos(lon), c * math.sin(lon), math.sin(lat)


def _cross(a: Vec, b: Vec) -> Vec:
    return a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]


def _dot(a: Vec, b: Vec) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _norm(a: Vec) -> float:
    return math.sqrt(_dot(a, a))


def _angle(a: Vec, b: Vec) -> float:
    """The angle between two unit vectors (atan2 keeps it exact for tiny angles too)."""
    return math.atan2(_norm(_cross(a, b)), _dot(a, b))


def _on_arc(x: Vec, a: Vec, b: Vec, n: Vec) -> bool:
    """Whether `x`, on the great circle of a→b (normal `n`), lies between a and b."""
    return _dot(_cross(a, x), n) >= 0.0 and _dot(_cross(x, b), n) >= 0.0


def _foot(p: Vec, a: Vec, b: Vec) -> tuple[float, float]:
    """Angular distance from p to the arc a–b, and how far from a the arc's nearest point to p lies."""
    n = _cross(a, b)
    length = _norm(n)
    if length < 1e-15:  # a and b coincide
        return _angle(p, a), 0.0
    n = (n[0] / length, n[1] / length, n[2] / length)
    off = _dot(p, n)
    foot = (p[0] - off * n[0], p[1] - off * n[1], p[2] - off * n[2])
    if _norm(foot) > 1e-15 and _on_arc(foot, a, b, n):
        return math.asin(min(1.0, abs(off))), _angle(a, foot)
    to_a, to_b = _angle(p, a), _angle(p, b)
    return (to_a, 0.0) if to_a <= to_b else (to_b, _angle(a, b))


def _point_arc(p: Vec, a: Vec, b: Vec) -> float:
    return _foot(p, a, b)[0]


def _arcs_cross(a: Vec, b: Vec, c: Vec, d: Vec) -> bool:
    n1, n2 = _cross(a, b), _cross(c, d)
    line = _cross(n1, n2)
    length = _norm(line)
    if length < 1e-15:  # same great circle (or a degenerate arc): endpoint distances decide
        return False
    x = (line[0] / length, line[1] / length, line[2] / length)
    for cand in (x, (-x[0], -x[1], -x[2])):
        if _on_arc(cand, a, b, n1) and _on_arc(cand, c, d, n2):
            return True
    return False


def _arcs(geometry: dict[str, Any]) -> list[tuple[Vec, Vec]]:
    pts = [_vec(p) for p in vertices(geometry)]
    return [(pts[0], pts[0])] if len(pts) == 1 else list(itertools.pairwise(pts))


def distance_m(g1: dict[str, Any], g2: dict[str, Any]) -> float:
    """Metres between two GeoJSON Points or LineStrings (0 where they touch or cross)."""
    pts1 = [_vec(p) for p in vertices(g1)]
    pts2 = [_vec(p) for p in vertices(g2)]
    if len(pts1) > len(pts2):
        pts1, pts2 = pts2, pts1
    if len(pts2) == 1:  # two points
        return _angle(pts1[0], pts2[0]) * EARTH_RADIUS_M
    arcs2 = list(itertools.pairwise(pts2))
    if len(pts1) == 1:  # a point and a line
        return min(_point_arc(pts1[0], c, d) for c, d in arcs2) * EARTH_RADIUS_M
    best = math.inf
    for a, b in itertools.pairwise(pts1):
        for c, d in arcs2:
            if _arcs_cross(a, b, c, d):
                return 0.0
            best = min(best, _point_arc(a, c, d), _point_arc(b, c, d), _point_arc(c, a, b), _point_arc(d, a, b))
    return best * EARTH_RADIUS_M


def length_m(geometry: dict[str, Any]) -> float:
    return sum(_angle(a, b) for a, b in _arcs(geometry)) * EARTH_RADIUS_M


def along_m(geometry: dict[str, Any], point: Position) -> float:
    """How far along a line (from its first vertex) lies the place nearest to `point`."""
    p = _vec(point)
    best, where, walked = math.inf, 0.0, 0.0
    for a, b in _arcs(geometry):
        d, run = _foot(p, a, b)
        if d < best:
            best, where = d, walked + run
        walked += _angle(a, b)
    return where * EARTH_RADIUS_M


# --- planar tests in degrees (a bounding box is drawn in lon/lat) -------------------------------------


def _segment_hits_box(p: Position, q: Position, box: Box) -> bool:
    """Liang–Barsky clipping of segment p–q against the box."""
    min_lon, min_lat, max_lon, max_lat = box
    t0, t1 = 0.0, 1.0
    dx, dy = q[0] - p[0], q[1] - p[1]
    for edge_p, edge_q in ((-dx, p[0] - min_lon), (dx, max_lon - p[0]), (-dy, p[1] - min_lat), (dy, max_lat - p[1])):
        if edge_p == 0:
            if edge_q < 0:
                return False
            continue
        t = edge_q / edge_p
        if edge_p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return False
    return True


def intersects_box(geometry: dict[str, Any], box: Box) -> bool:
    """Whether a Point or LineString touches the box (boundary included)."""
    pts = vertices(geometry)
    if len(pts) == 1:
        return box[0] <= pts[0][0] <= box[2] and box[1] <= pts[0][1] <= box[3]
    return any(_segment_hits_box(p, q, box) for p, q in itertools.pairwise(pts))
