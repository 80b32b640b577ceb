"""Small helpers every service's edges share: role checks, page tokens, the caller's address."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import Request

from lifeline.kit import i18n
from lifeline.kit.audit import audit
from lifeline.kit.auth import Principal
from lifeline.kit.problems import FieldError, ProblemError

i18n.register(
    {
        "kit.missing_role": {"zh-CN": "需要以下角色之一：{roles}", "en": "one of these roles is required: {roles}"},
        "kit.bad_page_token": {"zh-CN": "分页标记无效", "en": "invalid page token"},
    }
)


def require_any_role(principal: Principal, roles: tuple[str, ...]) -> None:
    """403 problem unless the principal holds one of `roles`."""
    if not principal.has_role(*roles):
        raise ProblemError(403, detail="kit.missing_role", params={"roles": ", ".join(roles)})


def require_visible(
    principal: Principal, region: str, *, detail: str, action: str, resource: str, source: str | None
) -> None:
    """403 problem (message ``detail``, given ``region``) unless the principal's scope covers ``region``.

    The refusal is audited: someone reaching for another region's data is what an auditor looks for.
    """
    if principal.region is None or not principal.sees(region):
        audit(principal=principal, action=action, resource=resource, region=region, source=source, outcome="forbidden")
        raise ProblemError(403, detail=detail, params={"region": region})


def invalid_field(field: str, key: str, **params: Any) -> ProblemError:
    """422 naming the field; the detail (message ``key``) says what is wrong in the caller's language."""
    return ProblemError(422, detail=key, params=params, errors=[FieldError(field, "invalid", key, params)])


def scope_prefix(region: str) -> str:
    """The region-code prefix of everything ``region`` contains (the SQL form of ``region_contains``)."""
    if region == "100000":
        return ""
    if region.endswith("0000"):
        return region[:2]
    if region.endswith("00"):
        return region[:4]
    return region


def encode_page_token(value: str) -> str:
    """An opaque page token for the last key of a page."""
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str:
    """The key a page token carries; 400 problem if it is not one of ours."""
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProblemError(400, detail="kit.bad_page_token") from exc


def bad_page_token() -> ProblemError:
    """The problem for a page token that decodes but does not fit the listing."""
    return ProblemError(400, detail="kit.bad_page_token")


def client_address(request: Request) -> str | None:
    """``host:port`` of the caller, for the audit log."""
    return f"{request.client.host}:{request.client.port}" if request.client else None
