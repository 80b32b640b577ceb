"""REST edge of the coverage statistics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from lifeline.kit import i18n
from lifeline.kit.auth import PrincipalDep

from .schemas import CoveragePublic
from .service import CoverageService

router = APIRouter(prefix="/v1", tags=["coverage"])


async def get_coverage(request: Request) -> CoverageService:
    return request.app.state.coverage  # type: ignore[no-any-return]


CoverageDep = Annotated[CoverageService, Depends(get_coverage)]


@router.get(
    "/coverage",
    response_model=CoveragePublic,
    summary="Census coverage per domain and region: registered, monitored, reporting in the last day",
)
async def coverage(
    request: Request,
    principal: PrincipalDep,
    service: CoverageDep,
    region: Annotated[
        str | None, Query(pattern=r"^\d{6}$", description="GB/T 2260 code; default: the caller's region")
    ] = None,
) -> dict[str, Any]:
    lang = i18n.negotiate(request.headers.get("accept-language"))
    return await service.coverage(principal=principal, region=region, lang=lang)
