"""REST edge of notifications: webhook subscriptions, their delivery log, and the SSE alert stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from lifeline.kit.api import client_address, require_any_role
from lifeline.kit.auth import PrincipalDep
from lifeline.kit.catalogue import Level

from ..messages import EVENT_KIND, LEVEL
from ..service import READER_ROLES
from .live import RESET, LiveFeed, WatchFilter
from .schemas import (
    DeliveryPage,
    DeliveryPublic,
    DeliveryStatus,
    EventKind,
    WebhookCreate,
    WebhookList,
    WebhookPublic,
    WebhookUpdate,
)
from .service import MAX_PAGE, Notifications, domain_number, event_body

router = APIRouter(prefix="/v1", tags=["notifications"])


# async on purpose: FastAPI runs a plain `def` dependency in its thread pool.
async def get_notifications(request: Request) -> Notifications:
    return request.app.state.notify  # type: ignore[no-any-return]


async def get_feed(request: Request) -> LiveFeed:
    return request.app.state.live  # type: ignore[no-any-return]


NotifyDep = Annotated[Notifications, Depends(get_notifications)]
FeedDep = Annotated[LiveFeed, Depends(get_feed)]


@router.post("/webhooks", status_code=201, response_model=WebhookPublic, summary="Subscribe a webhook")
async def create_webhook(
    request: Request, body: WebhookCreate, principal: PrincipalDep, notify: NotifyDep
) -> dict[str, Any]:
    return await notify.create_webhook(
        webhook_in=body.model_dump(), principal=principal, source=client_address(request)
    )


@router.get("/webhooks", response_model=WebhookList, summary="Webhook subscriptions in the caller's region")
async def list_webhooks(principal: PrincipalDep, notify: NotifyDep) -> dict[str, Any]:
    return {"webhooks": await notify.list_webhooks(principal=principal)}


@router.get("/webhooks/{webhook_id}", response_model=WebhookPublic, summary="A subscription with delivery counts")
async def get_webhook(request: Request, webhook_id: str, principal: PrincipalDep, notify: NotifyDep) -> dict[str, Any]:
    return await notify.get_webhook(webhook_id=webhook_id, principal=principal, source=client_address(request))


@router.patch("/webhooks/{webhook_id}", response_model=WebhookPublic, summary="Change a subscription")
async def update_webhook(
    request: Request, webhook_id: str, body: WebhookUpdate, principal: PrincipalDep, notify: NotifyDep
) -> dict[str, Any]:
    return await notify.update_webhook(
        webhook_id=webhook_id,
        changes=body.model_dump(exclude_unset=True),
        principal=principal,
        source=client_address(request),
    )


@router.delete("/webhooks/{webhook_id}", status_code=204, summary="Remove a subscription and its delivery log")
async def delete_webhook(request: Request, webhook_id: str, principal: PrincipalDep, notify: NotifyDep) -> Response:
    await notify.delete_webhook(webhook_id=webhook_id, principal=principal, source=client_address(request))
    return Response(status_code=204)


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    response_model=DeliveryPage,
    summary="The delivery log of a subscription, newest first, with every attempt",
)
async def list_deliveries(
    request: Request,
    webhook_id: str,
    principal: PrincipalDep,
    notify: NotifyDep,
    status: DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    page_token: str | None = None,
) -> dict[str, Any]:
    items, token = await notify.list_deliveries(
        webhook_id=webhook_id,
        principal=principal,
        status=status,
        limit=limit,
        page_token=page_token,
        source=client_address(request),
    )
    return {"deliveries": items, "next_page_token": token}


@router.post(
    "/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    response_model=DeliveryPublic,
    summary="Try a given-up (dead) delivery again",
)
async def redeliver(
    request: Request, webhook_id: str, delivery_id: str, principal: PrincipalDep, notify: NotifyDep
) -> dict[str, Any]:
    return await notify.redeliver(
        webhook_id=webhook_id, delivery_id=delivery_id, principal=principal, source=client_address(request)
    )


@router.get(
    "/alerts/stream",
    summary="Live alert events in the caller's region (Server-Sent Events; resumes after Last-Event-ID)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream_alerts(
    principal: PrincipalDep,
    notify: NotifyDep,
    feed: FeedDep,
    min_level: Level | None = None,
    domain: Annotated[str | None, Query(max_length=32, description="Facility kind: gas, water_supply, ...")] = None,
    region: Annotated[str | None, Query(pattern=r"^\d{1,6}$", description="Region code prefix")] = None,
    kind: Annotated[list[EventKind] | None, Query()] = None,
    last_event_id: Annotated[str | None, Header(max_length=255)] = None,
) -> StreamingResponse:
    require_any_role(principal, READER_ROLES)
    flt = WatchFilter(
        min_level=LEVEL[str(min_level)] if min_level else 0,
        domain=domain_number("domain", domain) if domain else 0,
        region_prefix=region or "",
        kinds=frozenset(EVENT_KIND[k] for k in kind or ()),
    )
    heartbeat_s = notify.settings.heartbeat_s

    async def events() -> AsyncIterator[str]:
        watcher = feed.watch(principal, flt, last_event_id)
        try:
            # The reconnection delay, and a first line so the client knows the stream is live.
            yield "retry: 3000\n: connected\n\n"
            async for item in watcher.stream(heartbeat_s):
                if item is None:
                    yield ": heartbeat\n\n"
                elif item is RESET:
                    yield "event: reset\ndata: {}\n\n"
                else:
                    event_id, event = item  # type: ignore[misc]
                    data = json.dumps(event_body(event_id, event), ensure_ascii=False, separators=(",", ":"))
                    yield f"id: {event_id}\ndata: {data}\n\n"
        finally:
            feed.unwatch(watcher)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
