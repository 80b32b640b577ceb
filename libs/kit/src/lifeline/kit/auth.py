"""Authentication and region-scoped authorization (DESIGN §5).

Services validate RS256 access tokens locally against the issuer's JWKS (cached, refetched on an
unknown ``kid`` at most once per ``refetch_interval``), checking issuer, audience, expiry and
not-before. A valid token becomes a :class:`Principal`: roles come from ``realm_access.roles`` and the
``region`` claim scopes what the principal may see (GB/T 2260 hierarchy, ``100000`` = national).

- REST (FastAPI): :func:`get_principal` / :data:`PrincipalDep`, :func:`require_roles`, :func:`ensure_region`;
  the verifier lives at ``app.state.token_verifier``.
- gRPC (grpc.aio): :class:`lifeline.kit.grpc.AuthInterceptor`; servicers read :func:`current_principal`.
- Outgoing calls: :class:`ClientCredentials` obtains and caches service tokens.

The issuer is Keycloak in production and the dev provider (deploy/dev-idp) in development and tests;
both serve ``<base>/realms/<realm>/protocol/openid-connect/...``, so python-keycloak talks to either.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Final

import httpx
from fastapi import Depends, HTTPException, Request

if TYPE_CHECKING:
    # Imported where used: gRPC (the interceptor lives in lifeline.kit.grpc) and jwcrypto (the first
    # JWKS fetch) cost ~9.5 and ~9.7 MB of RSS, which a process that serves no gRPC and verifies no
    # token (ingest's storage process) need not carry.
    import grpc
    from jwcrypto import jwk

__all__ = [
    "DEFAULT_PUBLIC_METHODS",
    "NATIONAL_REGION",
    "AuthError",
    "ClientCredentials",
    "Principal",
    "PrincipalDep",
    "TokenRequestError",
    "TokenVerifier",
    "authenticate",
    "current_principal",
    "ensure_region",
    "get_principal",
    "parse_bearer",
    "region_contains",
    "require_roles",
    "split_issuer",
]

log = logging.getLogger(__name__)

NATIONAL_REGION: Final = "100000"
_REGION_RE = re.compile(r"^\d{6}$")
# Verified tokens remembered (until they expire) so a repeated token costs no signature check.
VERIFIED_CACHE_SIZE = 10_000
_ISSUER_RE = re.compile(r"^(?P<base>https?://.+?)/realms/(?P<realm>[^/]+)/?$")
# RS256 only: accepting other algorithms opens the classic confusions (alg "none", HS256 keyed with
# the public key); Keycloak and the dev provider both sign access tokens with RS256.
_ALLOWED_ALG: Final = "RS256"
_ACCEPTED_TYP = frozenset({"jwt", "at+jwt", "application/at+jwt"})

# Error codes; 403 for authenticated-but-not-allowed, 503 when the issuer cannot be reached,
# 401 for everything else.
_FORBIDDEN_CODES = frozenset({"forbidden_region", "missing_role"})
_UNAVAILABLE_CODES = frozenset({"issuer_unavailable"})


class AuthError(Exception):
    """A request could not be authenticated or is not allowed; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        """The HTTP status for this error: 401, 403 or 503."""
        if self.code in _FORBIDDEN_CODES:
            return 403
        if self.code in _UNAVAILABLE_CODES:
            return 503
        return 401

    @property
    def grpc_status(self) -> grpc.StatusCode:
        """The gRPC status for this error: UNAUTHENTICATED, PERMISSION_DENIED or UNAVAILABLE."""
        import grpc

        if self.code in _FORBIDDEN_CODES:
            return grpc.StatusCode.PERMISSION_DENIED
        if self.code in _UNAVAILABLE_CODES:
            return grpc.StatusCode.UNAVAILABLE
        return grpc.StatusCode.UNAUTHENTICATED


class TokenRequestError(Exception):
    """The issuer refused or failed a client-credentials token request."""


# ---- principal and region scope -----------------------------------------------------------------


def region_contains(scope: str | None, region_code: str) -> bool:
    """Whether ``region_code`` is ``scope`` or one of its descendants (GB/T 2260; 100000 = all)."""
    if scope is None or not _REGION_RE.match(scope) or not _REGION_RE.match(region_code):
        return False
    if scope == NATIONAL_REGION:
        return True
    if scope.endswith("0000"):  # province: every XX....
        return region_code[:2] == scope[:2]
    if scope.endswith("00"):  # prefecture-level city: every XXYY..
        return region_code[:4] == scope[:4]
    return region_code == scope  # county: only itself


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: who (subject, client), what it may do (roles) and see (region)."""

    subject: str
    client_id: str
    roles: frozenset[str]
    region: str | None
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False, hash=False)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Principal:
        """Build a principal from verified token claims (Keycloak layout)."""
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise AuthError("invalid_token", "token has no subject")
        client_id = claims.get("azp") or claims.get("client_id") or ""
        realm_access = claims.get("realm_access")
        raw_roles = realm_access.get("roles", []) if isinstance(realm_access, Mapping) else []
        roles = frozenset(r for r in raw_roles if isinstance(r, str)) if isinstance(raw_roles, list) else frozenset()
        region = claims.get("region")
        # A Keycloak user attribute mapper may emit a single-valued attribute as a one-element list.
        if isinstance(region, list) and len(region) == 1:
            region = region[0]
        if not isinstance(region, str) or not _REGION_RE.match(region):
            region = None  # no (valid) region: the principal sees nothing region-scoped
        return cls(
            subject=sub,
            client_id=str(client_id),
            roles=roles,
            region=region,
            claims=MappingProxyType(dict(claims)),
        )

    def sees(self, region_code: str) -> bool:
        """Whether this principal may see data of ``region_code`` (its region or a descendant)."""
        return region_contains(self.region, region_code)

    def has_role(self, *roles: str) -> bool:
        """Whether the principal holds at least one of ``roles``."""
        return not self.roles.isdisjoint(roles)

    def require_region(self, region_code: str) -> None:
        """Raise AuthError ``forbidden_region`` unless the principal sees ``region_code``."""
        if not self.sees(region_code):
            raise AuthError(
                "forbidden_region",
                f"principal of region {self.region or 'none'} may not access region {region_code}",
            )

    def require_role(self, *roles: str) -> None:
        """Raise AuthError ``missing_role`` unless the principal holds one of ``roles``."""
        if not self.has_role(*roles):
            raise AuthError("missing_role", f"requires one of the roles: {', '.join(sorted(roles))}")


# ---- token verification -------------------------------------------------------------------------


def split_issuer(issuer: str) -> tuple[str, str] | None:
    """Split a Keycloak-style issuer ``<base>/realms/<realm>`` into (server_url with trailing /, realm)."""
    m = _ISSUER_RE.match(issuer)
    if m is None:
        return None
    return m["base"] + "/", m["realm"]


def parse_bearer(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` value; AuthError if absent or malformed."""
    if authorization is None or not authorization.strip():
        raise AuthError("missing_token", "no bearer token: send 'Authorization: Bearer <access token>'")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise AuthError("invalid_token", "malformed authorization: expected 'Bearer <access token>'")
    return token


def _b64json(part: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise AuthError("invalid_token", f"token {what} is not base64url-encoded JSON") from exc
    if not isinstance(value, dict):
        raise AuthError("invalid_token", f"token {what} is not a JSON object")
    return value


class TokenVerifier:
    """Validates RS256 access tokens of one issuer and audience against the issuer's JWKS."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        http_client: httpx.AsyncClient | None = None,
        leeway: float = 30,
        refetch_interval: float = 10.0,
        jwks_max_age: float = 3600.0,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.leeway = leeway
        self.refetch_interval = refetch_interval
        self.jwks_max_age = jwks_max_age
        # How many times the JWKS was fetched: observable so tests and metrics can see refetch storms.
        self.jwks_fetches = 0
        self._http = http_client
        self._keys: dict[str, jwk.JWK] = {}
        self._fetched_at: float | None = None  # monotonic time of the last fetch attempt
        self._loaded_at: float | None = None  # monotonic time of the last successful fetch
        self._lock = asyncio.Lock()
        self._verified: dict[str, tuple[Principal, float]] = {}
        # Keys come by OpenID discovery (issuer/.well-known/openid-configuration → jwks_uri), which
        # Keycloak and the dev provider both serve. Services only verify, so they need no Keycloak
        # client library in memory (python-keycloak costs ~30 MB of RSS); ClientCredentials uses it.

    async def aclose(self) -> None:
        """Nothing to release: discovery uses a short-lived httpx client or the caller's."""

    # -- JWKS --

    async def _download_jwks(self) -> Mapping[str, Any]:
        client = self._http
        owned = client is None
        if client is None:
            client = httpx.AsyncClient(timeout=10.0)
        try:
            resp = await client.get(f"{self.issuer}/.well-known/openid-configuration")
            resp.raise_for_status()
            meta = resp.json()
            if not isinstance(meta, dict) or not isinstance(meta.get("jwks_uri"), str):
                raise ValueError("discovery document has no jwks_uri")
            if str(meta.get("issuer", "")).rstrip("/") != self.issuer:
                raise AuthError("issuer_unavailable", f"discovery document names issuer {meta.get('issuer')!r}")
            resp = await client.get(meta["jwks_uri"])
            resp.raise_for_status()
            data = resp.json()
            if not isinstance(data, dict):
                raise ValueError("JWKS is not a JSON object")
            return data
        finally:
            if owned:
                await client.aclose()

    async def refresh_keys(self) -> None:
        """Fetch the issuer's JWKS now and replace the cached keys."""
        self._fetched_at = time.monotonic()
        self.jwks_fetches += 1
        try:
            data = await self._download_jwks()
        except AuthError:
            raise
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot fetch JWKS of %s: %s", self.issuer, exc)
            raise AuthError("issuer_unavailable", f"cannot fetch the signing keys of {self.issuer}") from exc
        from jwcrypto import jwk
        from jwcrypto.common import JWException

        keys: dict[str, jwk.JWK] = {}
        for entry in data.get("keys", []):
            if not isinstance(entry, dict) or entry.get("kty") != "RSA":
                continue
            if entry.get("use", "sig") != "sig" or entry.get("alg", _ALLOWED_ALG) != _ALLOWED_ALG:
                continue
            try:
                # Only the public parameters: a JWKS must never carry private ones, and if it did we
                # would not want them in memory.
                key = jwk.JWK(kty="RSA", n=entry["n"], e=entry["e"])
            except (KeyError, ValueError, JWException) as exc:
                log.warning("ignoring malformed JWK %s from %s: %s", entry.get("kid"), self.issuer, exc)
                continue
            keys[str(entry.get("kid", ""))] = key
        self._keys = keys
        self._loaded_at = time.monotonic()

    def _needs_fetch(self, kid: str | None) -> bool:
        if self._loaded_at is None or time.monotonic() - self._loaded_at > self.jwks_max_age:
            return True
        return kid not in self._keys and not (kid is None and len(self._keys) == 1)

    async def _key_for(self, kid: str | None) -> jwk.JWK:
        if self._needs_fetch(kid):
            async with self._lock:
                # Another request may have refreshed while this one waited for the lock; and refetches
                # are rate-limited so a flood of tokens with made-up kids cannot hammer the issuer.
                recently = self._fetched_at is not None and time.monotonic() - self._fetched_at < self.refetch_interval
                if self._needs_fetch(kid) and not recently:
                    try:
                        await self.refresh_keys()
                    except AuthError:
                        if self._loaded_at is None:
                            raise
                        # Keep verifying with the keys we have while the issuer is briefly away.
                        log.warning("JWKS refresh of %s failed; keeping %d cached keys", self.issuer, len(self._keys))
        if self._loaded_at is None:
            raise AuthError("issuer_unavailable", f"the signing keys of {self.issuer} are not available")
        if kid is None:
            if len(self._keys) == 1:
                return next(iter(self._keys.values()))
            raise AuthError("unknown_key", "token has no 'kid' and the issuer has several keys")
        key = self._keys.get(kid)
        if key is None:
            raise AuthError("unknown_key", f"token signed with unknown key {kid!r}")
        return key

    # -- verification --

    async def verify_claims(self, token: str) -> dict[str, Any]:
        """Verify ``token`` (signature, alg, iss, aud, exp, nbf) and return its claims."""
        if not token:
            raise AuthError("missing_token", "no access token")
        parts = token.split(".")
        if len(parts) == 5:
            raise AuthError("invalid_token", "encrypted tokens (JWE) are not accepted")
        if len(parts) != 3 or not all(parts[:2]):
            raise AuthError("invalid_token", "not a JWT (expected header.payload.signature)")
        header = _b64json(parts[0], "header")
        alg = header.get("alg")
        if alg != _ALLOWED_ALG:
            raise AuthError("unsupported_alg", f"token algorithm {alg!r} is not accepted (RS256 only)")
        if "crit" in header:
            raise AuthError("invalid_token", "token has critical header extensions this service does not understand")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYP):
            raise AuthError("invalid_token", f"token type {typ!r} is not an access token")
        # The issuer is read before the signature is checked only to reject early and precisely (and to
        # avoid a JWKS refetch for a foreign issuer's kid); acceptance happens only after verification.
        unverified = _b64json(parts[1], "payload")
        if unverified.get("iss") != self.issuer:
            raise AuthError("wrong_issuer", f"token issuer {unverified.get('iss')!r} is not {self.issuer!r}")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("invalid_token", "token 'kid' is not a string")
        key = await self._key_for(kid)
        # (jwcrypto is imported by the first JWKS fetch, which _key_for has done by now.)
        from jwcrypto import jws
        from jwcrypto.common import JWException

        signed = jws.JWS()
        signed.allowed_algs = [_ALLOWED_ALG]
        try:
            signed.deserialize(token)
            signed.verify(key, alg=_ALLOWED_ALG)
        except JWException as exc:
            raise AuthError("invalid_token", "token signature is invalid") from exc
        try:
            claims = json.loads(signed.payload)
        except ValueError as exc:
            raise AuthError("invalid_token", "token payload is not JSON") from exc
        if not isinstance(claims, dict):
            raise AuthError("invalid_token", "token payload is not a JSON object")
        self._check_claims(claims)
        return claims

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        if claims.get("iss") != self.issuer:
            raise AuthError("wrong_issuer", f"token issuer {claims.get('iss')!r} is not {self.issuer!r}")
        now = time.time()
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise AuthError("invalid_token", "token has no expiry")
        if now > exp + self.leeway:
            raise AuthError("expired", "token has expired")
        nbf = claims.get("nbf")
        if nbf is not None:
            if not isinstance(nbf, int | float) or isinstance(nbf, bool):
                raise AuthError("invalid_token", "token 'nbf' is not a number")
            if now + self.leeway < nbf:
                raise AuthError("invalid_token", "token is not valid yet")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self.audience not in audiences:
            raise AuthError("wrong_audience", f"token is not meant for audience {self.audience!r}")
        # Keycloak marks ID and refresh tokens with typ "ID"/"Refresh"; only access tokens are accepted.
        typ = claims.get("typ")
        if typ is not None and typ != "Bearer":
            raise AuthError("invalid_token", f"token of type {typ!r} is not an access token")

    async def verify(self, token: str) -> Principal:
        """Verify an access token and return its principal; raises AuthError."""
        # A device or partner sends the same token with every request until it expires: verifying
        # the RS256 signature once is enough. Expiry is still checked on every use.
        cached = self._verified.get(token)
        if cached is not None:
            principal, exp = cached
            if time.time() <= exp + self.leeway:
                return principal
            del self._verified[token]
        claims = await self.verify_claims(token)
        principal = Principal.from_claims(claims)
        expires = claims.get("exp")
        if isinstance(expires, int | float):
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                # Drop the oldest entry (dicts keep insertion order); enough for a bounded cache.
                self._verified.pop(next(iter(self._verified)))
            self._verified[token] = (principal, float(expires))
        return principal

    async def verify_authorization(self, authorization: str | None) -> Principal:
        """Verify an ``Authorization: Bearer`` header value and return its principal."""
        return await self.verify(parse_bearer(authorization))


# ---- FastAPI ------------------------------------------------------------------------------------


def _header_text(text: str) -> str:
    # RFC 6750 error_description is a quoted-string of printable ASCII without '"' and '\'.
    return "".join(c for c in text if 0x20 <= ord(c) < 0x7F and c not in '"\\')


def _http_error(err: AuthError) -> HTTPException:
    status = err.http_status
    if err.code == "missing_token":
        # RFC 6750 §3.1: no error code when the request carried no credentials at all.
        challenge = 'Bearer realm="lifeline"'
    elif status == 403:
        challenge = f'Bearer error="insufficient_scope", error_description="{_header_text(err.message)}"'
    else:
        challenge = f'Bearer error="invalid_token", error_description="{_header_text(err.message)}"'
    return HTTPException(
        status_code=status,
        # "<code>: <message>", as in gRPC status details: readable, and the code stays greppable
        # when lifeline.kit.problems renders it as RFC 9457 problem details.
        detail=f"{err.code}: {err.message}",
        headers={"WWW-Authenticate": challenge},
    )


async def authenticate(app: Any, authorization: str | None) -> Principal:
    """The principal of an ``Authorization`` header value, verified by ``app.state.token_verifier``.

    Raises HTTPException 401/403/503 with the ``WWW-Authenticate`` challenge (rendered as problem details).
    """
    verifier = getattr(app.state, "token_verifier", None)
    if not isinstance(verifier, TokenVerifier):
        raise RuntimeError("app.state.token_verifier is not set to a TokenVerifier")
    try:
        return await verifier.verify_authorization(authorization)
    except AuthError as err:
        raise _http_error(err) from err


async def get_principal(request: Request) -> Principal:
    """FastAPI dependency: the caller's principal from ``Authorization: Bearer`` (401/403 otherwise)."""
    return await authenticate(request.app, request.headers.get("authorization"))


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_roles(*roles: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A FastAPI dependency yielding the principal if it holds one of ``roles``, else 403."""
    if not roles:
        raise ValueError("require_roles needs at least one role")

    async def dependency(principal: PrincipalDep) -> Principal:
        try:
            principal.require_role(*roles)
        except AuthError as err:
            raise _http_error(err) from err
        return principal

    return dependency


def ensure_region(principal: Principal, region: str) -> None:
    """Raise HTTP 403 unless ``principal`` sees ``region``."""
    try:
        principal.require_region(region)
    except AuthError as err:
        raise _http_error(err) from err


# ---- gRPC ---------------------------------------------------------------------------------------

DEFAULT_PUBLIC_METHODS: Final = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.health.v1.Health/List",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)

_principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("lifeline_principal", default=None)


def current_principal() -> Principal:
    """The principal of the gRPC call being served (set by AuthInterceptor); AuthError if none."""
    principal = _principal_var.get()
    if principal is None:
        raise AuthError("missing_token", "no authenticated principal in this context")
    return principal


# ---- client credentials -------------------------------------------------------------------------


class ClientCredentials:
    """Obtains service access tokens by the client-credentials grant and caches them until near expiry."""

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str,
        *,
        refresh_margin: float = 30.0,
        scope: str = "openid",
    ) -> None:
        split = split_issuer(issuer)
        if split is None:
            raise ValueError(f"issuer {issuer!r} is not of the form <base>/realms/<realm>")
        server_url, realm = split
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self.refresh_margin = refresh_margin
        self.token_requests = 0  # observable for tests and metrics
        self._scope = scope
        # Imported here: only clients of other services (simulator, partners, federation) need it.
        from keycloak import KeycloakOpenID

        self._keycloak = KeycloakOpenID(
            server_url=server_url, realm_name=realm, client_id=client_id, client_secret_key=client_secret
        )
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        """A valid access token, fetched anew shortly before the cached one expires."""
        if self._token is not None and time.monotonic() < self._refresh_at:
            return self._token
        async with self._lock:
            # Concurrent callers share one request.
            if self._token is not None and time.monotonic() < self._refresh_at:
                return self._token
            started = time.monotonic()
            self.token_requests += 1
            from keycloak.exceptions import KeycloakError

            try:
                response = await self._keycloak.a_token(grant_type="client_credentials", scope=self._scope)
            except KeycloakError as exc:
                raise TokenRequestError(
                    f"client {self.client_id!r} could not obtain a token from {self.issuer}: {exc}"
                ) from exc
            access = response.get("access_token")
            if not isinstance(access, str) or not access:
                raise TokenRequestError(f"{self.issuer} returned no access_token for {self.client_id!r}")
            lifetime = float(response.get("expires_in") or 60)
            # Refresh a margin before expiry, but never more than a quarter of the lifetime early so
            # that short-lived tokens are still reused.
            margin = min(self.refresh_margin, lifetime / 4)
            self._token = access
            self._refresh_at = started + lifetime - margin
            return access

    async def authorization(self) -> str:
        """The ``Authorization`` header value (``Bearer <token>``)."""
        return f"Bearer {await self.token()}"

    def invalidate(self) -> None:
        """Forget the cached token (e.g. after a 401), so the next call fetches a new one."""
        self._token = None
        self._refresh_at = 0.0

    async def aclose(self) -> None:
        """Release the HTTP connections of the python-keycloak client."""
        await self._keycloak.connection.aclose()
