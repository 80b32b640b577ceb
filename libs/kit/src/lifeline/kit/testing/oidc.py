"""Fixtures: the dev OpenID provider (deploy/dev-idp) as a real process, and tokens from it.

``oidc_provider`` (session) starts ``node deploy/dev-idp/server.js`` on a free port with two realms,
``lifeline`` and ``other`` (a different issuer), and the clients in :data:`TEST_CLIENTS`.
``token_factory`` (session) gets access tokens from it by the client-credentials grant over HTTP.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from lifeline.kit.devidp import DevIdp, find_dev_idp_dir

__all__ = [
    "TEST_AUDIENCE",
    "TEST_CLIENTS",
    "DevOIDCProvider",
    "TokenFactory",
    "find_dev_idp_dir",
    "oidc_provider",
    "token_factory",
]

TEST_AUDIENCE = "lifeline"
_START_TIMEOUT = 30.0


def _client(
    client_id: str,
    roles: Sequence[str],
    region: str | None = "340100",
    *,
    audience: str = TEST_AUDIENCE,
    ttl: int = 300,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "client_id": client_id,
        "client_secret": f"secret-{client_id}",
        "roles": list(roles),
        "audience": audience,
        "access_token_ttl": ttl,
    }
    if region is not None:
        spec["region"] = region
    return spec


# Realm -> clients. Secrets are "secret-<client_id>".
TEST_CLIENTS: dict[str, list[dict[str, Any]]] = {
    "lifeline": [
        _client("svc", ["service", "admin"], "340100"),
        _client("partner-340100", ["partner"], "340100"),
        _client("operator-340100", ["operator", "viewer"], "340100"),
        _client("viewer-340200", ["viewer"], "340200"),
        _client("viewer-340000", ["viewer"], "340000"),
        _client("ministry", ["viewer"], "100000"),
        _client("no-region", ["viewer"], None),
        _client("short-ttl", ["viewer"], "340100", ttl=2),
        _client("wrong-aud", ["service"], "340100", audience="someone-else"),
    ],
    "other": [
        _client("svc", ["service", "admin"], "340100"),
    ],
}


@dataclass
class DevOIDCProvider:
    """A running dev provider: where it is, its test clients, and dev-only controls."""

    base_url: str
    process: DevIdp
    realm: str = "lifeline"
    audience: str = TEST_AUDIENCE
    clients: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        """Issuer of the default realm (``<base_url>/realms/lifeline``)."""
        return self.issuer_for(self.realm)

    def issuer_for(self, realm: str) -> str:
        """Issuer URL of ``realm``."""
        return f"{self.base_url}/realms/{realm}"

    def token_endpoint(self, realm: str | None = None) -> str:
        """The (Keycloak-shaped) token endpoint of ``realm``."""
        return f"{self.issuer_for(realm or self.realm)}/protocol/openid-connect/token"

    def secret(self, client_id: str, realm: str | None = None) -> str:
        """The client secret of a configured or registered client."""
        return str(self.clients[realm or self.realm][client_id]["client_secret"])

    async def rotate_keys(self, realm: str | None = None) -> str:
        """Make a new signing key current in ``realm`` (old ones stay in the JWKS); returns its kid."""
        async with httpx.AsyncClient(timeout=10) as http:
            resp = await http.post(f"{self.base_url}/_dev/realms/{realm or self.realm}/rotate-keys", json={})
            resp.raise_for_status()
            return str(resp.json()["kid"])

    async def register_client(
        self,
        client_id: str,
        *,
        roles: Sequence[str] = (),
        region: str | None = None,
        audience: str | None = None,
        access_token_ttl: int = 300,
        client_secret: str | None = None,
        realm: str | None = None,
    ) -> dict[str, Any]:
        """Register (or replace) a client at runtime; returns its config including the secret."""
        realm = realm or self.realm
        spec: dict[str, Any] = {
            "client_id": client_id,
            "roles": list(roles),
            "audience": audience or self.audience,
            "access_token_ttl": access_token_ttl,
        }
        if region is not None:
            spec["region"] = region
        if client_secret is not None:
            spec["client_secret"] = client_secret
        async with httpx.AsyncClient(timeout=10) as http:
            resp = await http.post(f"{self.base_url}/_dev/realms/{realm}/clients", json=spec)
            resp.raise_for_status()
            registered: dict[str, Any] = resp.json()
        self.clients.setdefault(realm, {})[client_id] = registered
        return registered

    async def token_response(self, client_id: str, realm: str | None = None) -> dict[str, Any]:
        """The full token-endpoint response of a client-credentials grant."""
        realm = realm or self.realm
        async with httpx.AsyncClient(timeout=10) as http:
            resp = await http.post(
                self.token_endpoint(realm),
                data={
                    "grant_type": "client_credentials",
                    "client_id": client_id,
                    "client_secret": self.secret(client_id, realm),
                },
            )
        if resp.status_code != 200:
            raise RuntimeError(f"token request for {client_id!r} failed: {resp.status_code} {resp.text}")
        body: dict[str, Any] = resp.json()
        return body


class TokenFactory:
    """``await token_factory("partner-340100")`` → an access token from the dev provider."""

    def __init__(self, provider: DevOIDCProvider) -> None:
        self.provider = provider
        self._ids = itertools.count(1)

    async def __call__(self, client_id: str, *, realm: str | None = None) -> str:
        """An access token of a configured client (client credentials over HTTP)."""
        return str((await self.provider.token_response(client_id, realm))["access_token"])

    async def client(
        self,
        roles: Sequence[str] = (),
        region: str | None = None,
        *,
        audience: str | None = None,
        access_token_ttl: int = 300,
        realm: str | None = None,
        client_id: str | None = None,
    ) -> str:
        """Register an ad-hoc client with these roles/region and return an access token of it."""
        client_id = client_id or f"adhoc-{next(self._ids)}"
        await self.provider.register_client(
            client_id,
            roles=roles,
            region=region,
            audience=audience,
            access_token_ttl=access_token_ttl,
            realm=realm,
        )
        return await self(client_id, realm=realm)


@pytest.fixture(scope="session")
def oidc_provider() -> Iterator[DevOIDCProvider]:
    """The dev OpenID provider (deploy/dev-idp) on a free port, realms ``lifeline`` and ``other``."""
    idp_dir = find_dev_idp_dir()
    if shutil.which("node") is None:
        pytest.skip("Node.js (`node`) is not installed; the dev OpenID provider needs it")
    if idp_dir is None or not (idp_dir / "node_modules" / "oidc-provider").is_dir():
        pytest.skip("deploy/dev-idp or its node_modules is missing; run `make bootstrap`")
    with tempfile.TemporaryDirectory(prefix="lifeline-idp-") as tmp:
        config = Path(tmp) / "realms.json"
        config.write_text(json.dumps({"realms": {r: {"clients": cs} for r, cs in TEST_CLIENTS.items()}}))
        idp = DevIdp(port=0, config=config, log_file=Path(tmp) / "idp.log", new_session=False)
        idp.start()
        try:
            yield DevOIDCProvider(
                base_url=idp.base_url,
                process=idp,
                clients={r: {c["client_id"]: dict(c) for c in cs} for r, cs in TEST_CLIENTS.items()},
            )
        finally:
            idp.stop()


@pytest.fixture(scope="session")
def token_factory(oidc_provider: DevOIDCProvider) -> TokenFactory:
    """Tokens from the dev provider: ``await token_factory("svc")``, ``await token_factory.client(...)``."""
    return TokenFactory(oidc_provider)
