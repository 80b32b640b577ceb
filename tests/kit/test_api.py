"""lifeline.kit.api: the edge helpers services share."""

from __future__ import annotations

import pytest

from lifeline.kit.api import decode_page_token, encode_page_token, require_any_role, require_visible
from lifeline.kit.auth import Principal
from lifeline.kit.problems import ProblemError


def test_page_token_round_trip_and_garbage() -> None:
    assert decode_page_token(encode_page_token("340104:HF-001")) == "340104:HF-001"
    with pytest.raises(ProblemError) as err:
        decode_page_token("%%%not-base64")
    assert err.value.status == 400


def test_require_any_role() -> None:
    p = Principal(subject="s", client_id="c", roles=frozenset({"viewer"}), region="340100")
    require_any_role(p, ("viewer", "admin"))
    with pytest.raises(ProblemError) as err:
        require_any_role(p, ("operator", "admin"))
    assert err.value.status == 403 and err.value.params["roles"] == "operator, admin"


def test_require_visible_refuses_other_regions_and_audits(caplog: pytest.LogCaptureFixture) -> None:
    city = Principal(subject="s", client_id="c", roles=frozenset({"viewer"}), region="340100")
    where = {"detail": "kit.missing_role", "action": "thing.read", "resource": "thing/1", "source": "127.0.0.1"}
    with caplog.at_level("INFO", logger="lifeline.audit"):
        require_visible(city, "340104", **where)  # a district of the city
        assert not caplog.records
        with pytest.raises(ProblemError) as err:
            require_visible(city, "340200", **where)
    assert err.value.status == 403 and err.value.params == {"region": "340200"}
    assert [r.name for r in caplog.records] == ["lifeline.audit"]
    with pytest.raises(ProblemError):
        require_visible(Principal(subject="s", client_id="c", roles=frozenset(), region=None), "340100", **where)
