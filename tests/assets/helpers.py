"""Helpers shared by the assets tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from lifeline.assets.app import AssetsApp
from lifeline.assets.models import TABLES, history_table

PIPE = "3401041102000001"


def facility(code: str = PIPE, **extra: Any) -> dict[str, Any]:
    return {
        "code": code,
        "kind": "gas",
        "name": "长江西路燃气中压管段",
        "geometry": {"type": "LineString", "coordinates": [[117.20, 31.82], [117.21, 31.83]]},
        "attributes": {"material": "PE", "diameter_mm": 200, "pressure_class": "中压A", "build_year": 2008},
        **extra,
    }


def sensor(sensor_id: str = "HF-GAS-CH4-0001", facility_code: str = PIPE, **extra: Any) -> dict[str, Any]:
    return {"sensor_id": sensor_id, "facility_code": facility_code, "quantity": "gas.ch4", **extra}


async def counts(app: AssetsApp) -> dict[str, int]:
    """Rows per table: current states, history and outbox."""
    out: dict[str, int] = {}
    async with app.db.transaction() as s:
        conn = await s.connection()
        for name, (table, _) in TABLES.items():
            out[name] = int((await conn.execute(select(func.count()).select_from(table))).scalar_one())
        out["history"] = int((await conn.execute(select(func.count()).select_from(history_table))).scalar_one())
    return out


def point(code: str, lon: float = 117.25, lat: float = 31.85, **extra: Any) -> dict[str, Any]:
    """A facility drawn as a point (stations, valves, manholes)."""
    return facility(code, geometry={"type": "Point", "coordinates": [lon, lat]}, **extra)


def risk(risk_id: str = "R-0001", codes: tuple[str, ...] = (PIPE,), **extra: Any) -> dict[str, Any]:
    return {
        "id": risk_id,
        "name": "长江西路燃气管道占压",
        "hazard": "gas_leak",
        "grade": "II",
        "geometry": {"type": "Point", "coordinates": [117.205, 31.825]},
        "facility_codes": list(codes),
        "controls": ["每日巡检", "甲烷监测"],
        "rectification": {"status": "in_progress", "owner": "合肥燃气集团", "deadline_ms": 1_800_000_000_000},
        **extra,
    }


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
