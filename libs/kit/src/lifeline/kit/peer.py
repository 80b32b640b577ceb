"""Calls to another service of the instance over gRPC, with the instance's service account.

:class:`PeerChannel` is a gRPC channel to a peer and the client-credentials token source that authorizes
calls on it; :func:`grpc_pages` walks a paged list call (``page_token`` / ``next_page_token``) through it.
(What a service keeps a copy of — the census — comes over the bus instead: :mod:`lifeline.kit.census`.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from lifeline.kit.auth import ClientCredentials
from lifeline.kit.config import InstanceSettings

if TYPE_CHECKING:
    import grpc.aio

__all__ = ["PeerChannel", "grpc_pages"]


class PeerChannel:
    """A gRPC channel to another service of this instance, and the instance's service account
    (client-credentials grant) to authorize calls on it, e.g. through :func:`grpc_pages`."""

    def __init__(self, address: str, instance: InstanceSettings) -> None:
        # gRPC imported here, by a process that dials a peer (see lifeline.kit.runtime).
        import grpc.aio

        self.channel: grpc.aio.Channel = grpc.aio.insecure_channel(address)
        self.credentials = ClientCredentials(instance.oidc_issuer, instance.oidc_client_id, instance.oidc_client_secret)

    async def close(self) -> None:
        """Close the channel and the token client."""
        await self.channel.close(None)
        await self.credentials.aclose()


async def grpc_pages(
    call: Callable[..., Awaitable[Any]],
    request: Any,
    *,
    items: str,
    credentials: ClientCredentials,
    timeout: float = 10.0,
) -> AsyncIterator[Any]:
    """Yield every item of a paged list call, following ``next_page_token`` to the end."""
    import grpc.aio

    token = ""
    while True:
        request.page_token = token
        metadata = (("authorization", await credentials.authorization()),)
        try:
            response = await call(request, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                credentials.invalidate()  # e.g. the issuer rotated its keys: the next try gets a new token
            raise
        for item in getattr(response, items):
            yield item
        token = response.next_page_token
        if not token:
            return
