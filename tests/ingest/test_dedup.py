"""The front door's dedup index: what it knows, what it must ask storage about."""

from __future__ import annotations

from lifeline.ingest.dedup import NEW, UNKNOWN, DedupIndex


def test_unseeded_sensor_asks_storage() -> None:
    idx = DedupIndex()
    assert idx.lookup("s", 100) is UNKNOWN


def test_seeded_above_stored_latest() -> None:
    idx = DedupIndex()
    idx.seed("s", 1000)
    assert idx.lookup("s", 1000) is UNKNOWN  # at or below what storage holds: ask storage
    assert idx.lookup("s", 1001) is NEW
    idx.reserve("s", 1001, 2.5)
    assert idx.lookup("s", 1001) == 2.5
    idx.release("s", 1001)
    assert idx.lookup("s", 1001) is NEW


def test_never_stored_sensor_has_an_open_window() -> None:
    idx = DedupIndex()
    idx.seed("s", None)
    assert idx.lookup("s", -5) is NEW


def test_pruning_raises_the_floor_and_keeps_the_newest() -> None:
    idx = DedupIndex(per_sensor=8)
    idx.seed("s", None)
    for ts in range(1, 10):  # the 9th reservation prunes to the newest 4
        idx.reserve("s", ts, float(ts))
    assert len(idx) == 4
    assert [idx.lookup("s", ts) for ts in (6, 7, 8, 9)] == [6.0, 7.0, 8.0, 9.0]
    assert idx.lookup("s", 5) is UNKNOWN  # pruned: storage has it (or will)
    assert idx.lookup("s", 10) is NEW


def test_late_reading_kept_in_memory_does_not_lower_the_floor() -> None:
    idx = DedupIndex(per_sensor=4)
    idx.seed("s", 100)
    idx.reserve("s", 50, 1.0)  # a late reading storage confirmed new
    assert idx.lookup("s", 50) == 1.0
    for ts in (101, 102, 103, 104):
        idx.reserve("s", ts, 0.0)
    # Pruned to the newest two; the floor never drops below where it started.
    assert idx.lookup("s", 60) is UNKNOWN
    assert idx.lookup("s", 103) == 0.0


def test_out_of_order_readings_above_the_floor_and_release_of_the_newest() -> None:
    idx = DedupIndex(per_sensor=8)
    idx.seed("s", 100)
    for ts in (110, 105, 120):
        assert idx.claim("s", ts, float(ts)) is NEW
    assert idx.claim("s", 105, 105.0) == 105.0  # older than the newest, still known
    assert idx.claim("s", 107, 1.0) is NEW  # between held readings, above the floor: new
    idx.release("s", 120)  # the newest's publish failed: it is new again, the rest stay
    assert idx.lookup("s", 120) is NEW
    assert idx.lookup("s", 110) == 110.0
    assert idx.claim("s", 120, 3.0) is NEW
    assert idx.lookup("s", 120) == 3.0


def test_pruning_after_out_of_order_claims_keeps_the_newest_by_time() -> None:
    # Held in arrival order, not time order: pruning must still keep the newest by device time, and
    # pruning again later (held in order by then) too.
    idx = DedupIndex(per_sensor=8)
    idx.seed("s", None)
    for ts in (10, 30, 20, 50, 40, 70, 60, 90, 80):  # the 9th claim prunes to the newest 4
        assert idx.claim("s", ts, float(ts)) is NEW
    assert len(idx) == 4
    assert [idx.lookup("s", ts) for ts in (60, 70, 80, 90)] == [60.0, 70.0, 80.0, 90.0]
    assert idx.lookup("s", 50) is UNKNOWN
    for ts in range(100, 105):  # 9 held again: pruned to the newest 4
        assert idx.claim("s", ts, float(ts)) is NEW
    assert len(idx) == 4
    assert [idx.lookup("s", ts) for ts in (101, 102, 103, 104)] == [101.0, 102.0, 103.0, 104.0]
    assert idx.lookup("s", 100) is UNKNOWN
    assert idx.claim("s", 102, 1.0) == 102.0
