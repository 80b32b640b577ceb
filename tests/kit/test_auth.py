"""lifeline.kit.auth against the real dev OpenID provider (deploy/dev-idp, npm oidc-provider)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
from fastapi import Depends, FastAPI
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from jwcrypto import jwk, jws

from lifeline.kit.auth import (
    AuthError,
    ClientCredentials,
    Principal,
    PrincipalDep,
    TokenRequestError,
    TokenVerifier,
    current_principal,
    ensure_region,
    region_contains,
    require_roles,
    split_issuer,
)
from lifeline.kit.grpc import AuthInterceptor
from lifeline.kit.testing.oidc import DevOIDCProvider, TokenFactory

# ---- helpers ------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    h, p, _ = token.split(".")
    return (
        json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4))),
        json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))),
    )


def claims_for(provider: DevOIDCProvider, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": provider.issuer,
        "aud": provider.audience,
        "sub": "mallory",
        "azp": "mallory",
        "realm_access": {"roles": ["admin"]},
        "region": "100000",
        "iat": now,
        "exp": now + 300,
        **extra,
    }


async def expect(verifier: TokenVerifier, token: str, code: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        await verifier.verify(token)
    assert info.value.code == code, info.value
    return info.value


@pytest.fixture
async def verifier(oidc_provider: DevOIDCProvider) -> AsyncIterator[TokenVerifier]:
    v = TokenVerifier(oidc_provider.issuer, oidc_provider.audience)
    yield v
    await v.aclose()


# ---- valid tokens -------------------------------------------------------------------------------


async def test_valid_token_gives_principal(verifier: TokenVerifier, token_factory: TokenFactory) -> None:
    token = await token_factory("partner-340100")
    header, _ = parts(token)
    assert header["alg"] == "RS256" and header["kid"]
    principal = await verifier.verify(token)
    assert principal.subject == "partner-340100"
    assert principal.client_id == "partner-340100"
    assert principal.roles == frozenset({"partner"})
    assert principal.region == "340100"
    assert principal.claims["aud"] == "lifeline"
    assert principal.claims["iss"] == verifier.issuer
    assert principal.has_role("partner", "admin") and not principal.has_role("admin")
    assert principal.sees("340102") and not principal.sees("340200")


async def test_admin_and_national_principals(verifier: TokenVerifier, token_factory: TokenFactory) -> None:
    svc = await verifier.verify(await token_factory("svc"))
    assert svc.roles == frozenset({"service", "admin"})
    ministry = await verifier.verify(await token_factory("ministry"))
    assert ministry.region == "100000" and ministry.sees("650102") and ministry.sees("340100")


async def test_token_without_region_sees_nothing(verifier: TokenVerifier, token_factory: TokenFactory) -> None:
    principal = await verifier.verify(await token_factory("no-region"))
    assert principal.region is None
    assert not principal.sees("340100") and not principal.sees("100000")


async def test_ad_hoc_client(verifier: TokenVerifier, token_factory: TokenFactory) -> None:
    token = await token_factory.client(roles=["operator"], region="340202")
    principal = await verifier.verify(token)
    assert principal.roles == frozenset({"operator"}) and principal.region == "340202"
    assert principal.client_id.startswith("adhoc-")


async def test_discovery_with_caller_http_client(oidc_provider: DevOIDCProvider, token_factory: TokenFactory) -> None:
    async with httpx.AsyncClient() as http:
        v = TokenVerifier(oidc_provider.issuer, "lifeline", http_client=http)
        principal = await v.verify(await token_factory("svc"))
        assert principal.subject == "svc" and v.jwks_fetches == 1
        await v.aclose()
        assert not http.is_closed  # the caller's client is the caller's to close


def test_split_issuer() -> None:
    assert split_issuer("http://h:8180/realms/lifeline") == ("http://h:8180/", "lifeline")
    assert split_issuer("https://sso.example/auth/realms/x/") == ("https://sso.example/auth/", "x")
    assert split_issuer("https://accounts.example.com") is None


# ---- refused tokens -----------------------------------------------------------------------------


async def test_missing_and_garbage(verifier: TokenVerifier) -> None:
    await expect(verifier, "", "missing_token")
    with pytest.raises(AuthError) as info:
        await verifier.verify_authorization(None)
    assert info.value.code == "missing_token"
    with pytest.raises(AuthError) as info:
        await verifier.verify_authorization("Basic dXNlcjpwdw==")
    assert info.value.code == "invalid_token"
    await expect(verifier, "garbage", "invalid_token")
    await expect(verifier, "a.b.c", "invalid_token")
    await expect(verifier, "a.b.c.d.e", "invalid_token")
    await expect(verifier, b64json({"alg": "RS256"}) + ".%%%." + b64(b"x"), "invalid_token")


async def test_expired_token(oidc_provider: DevOIDCProvider, token_factory: TokenFactory) -> None:
    token = await token_factory("short-ttl")
    _, claims = parts(token)
    assert claims["exp"] - claims["iat"] == 2
    strict = TokenVerifier(oidc_provider.issuer, "lifeline", leeway=0)
    lenient = TokenVerifier(oidc_provider.issuer, "lifeline", leeway=30)
    assert (await strict.verify(token)).subject == "short-ttl"
    await asyncio.sleep(max(0.0, claims["exp"] - time.time()) + 1.1)
    await expect(strict, token, "expired")
    assert (await lenient.verify(token)).subject == "short-ttl"  # within the clock-skew leeway
    await strict.aclose()
    await lenient.aclose()


async def test_wrong_issuer(
    oidc_provider: DevOIDCProvider, verifier: TokenVerifier, token_factory: TokenFactory
) -> None:
    foreign = await token_factory("svc", realm="other")
    await expect(verifier, foreign, "wrong_issuer")
    # The same token is fine for a verifier of its own issuer.
    other = TokenVerifier(oidc_provider.issuer_for("other"), "lifeline")
    assert (await other.verify(foreign)).subject == "svc"
    await other.aclose()


async def test_wrong_issuer_does_not_fetch_keys(verifier: TokenVerifier, token_factory: TokenFactory) -> None:
    await expect(verifier, await token_factory("svc", realm="other"), "wrong_issuer")
    assert verifier.jwks_fetches == 0


async def test_wrong_audience(verifier: TokenVerifier, token_factory: TokenFactory) -> None:
    token = await token_factory("wrong-aud")
    assert parts(token)[1]["aud"] == "someone-else"
    await expect(verifier, token, "wrong_audience")


async def test_other_audience_refuses(oidc_provider: DevOIDCProvider, token_factory: TokenFactory) -> None:
    # A verifier for a different audience refuses a valid token of this provider.
    billing = TokenVerifier(oidc_provider.issuer, "billing")
    await expect(billing, await token_factory("svc"), "wrong_audience")
    await billing.aclose()


def test_claim_rules(oidc_provider: DevOIDCProvider) -> None:
    v = TokenVerifier(oidc_provider.issuer, "lifeline", leeway=5)
    v._check_claims(claims_for(oidc_provider, aud=["account", "lifeline"]))  # aud may be a list
    cases = {
        "wrong_audience": claims_for(oidc_provider, aud=["account"]),
        "invalid_token": claims_for(oidc_provider, typ="ID"),  # Keycloak ID tokens are not access tokens
        "expired": claims_for(oidc_provider, exp=time.time() - 6),
    }
    for code, claims in cases.items():
        with pytest.raises(AuthError) as info:
            v._check_claims(claims)
        assert info.value.code == code
    with pytest.raises(AuthError) as info:
        v._check_claims(claims_for(oidc_provider, nbf=time.time() + 60))
    assert info.value.code == "invalid_token" and "not valid yet" in info.value.message
    v._check_claims(claims_for(oidc_provider, nbf=time.time() + 3))  # within leeway
    no_exp = claims_for(oidc_provider)
    del no_exp["exp"]
    with pytest.raises(AuthError):
        v._check_claims(no_exp)


async def test_alg_none(oidc_provider: DevOIDCProvider, verifier: TokenVerifier) -> None:
    token = b64json({"alg": "none", "typ": "JWT"}) + "." + b64json(claims_for(oidc_provider)) + "."
    await expect(verifier, token, "unsupported_alg")
    token = b64json({"alg": "None"}) + "." + b64json(claims_for(oidc_provider)) + "."
    await expect(verifier, token, "unsupported_alg")


async def test_hs256_signed_with_public_key(
    oidc_provider: DevOIDCProvider, verifier: TokenVerifier, token_factory: TokenFactory
) -> None:
    good = await token_factory("svc")
    await verifier.verify(good)  # JWKS now cached
    kid = parts(good)[0]["kid"]
    async with httpx.AsyncClient() as http:
        jwks = (await http.get(f"{oidc_provider.issuer}/protocol/openid-connect/certs")).json()
    public = jwk.JWK(**next(k for k in jwks["keys"] if k["kid"] == kid))
    for secret in (public.export_to_pem(), json.dumps(public.export_public(as_dict=True)).encode()):
        signing_input = b64json({"alg": "HS256", "typ": "JWT", "kid": kid}) + "." + b64json(claims_for(oidc_provider))
        sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        await expect(verifier, signing_input + "." + b64(sig), "unsupported_alg")


async def test_tampered_payload(
    oidc_provider: DevOIDCProvider, verifier: TokenVerifier, token_factory: TokenFactory
) -> None:
    token = await token_factory("partner-340100")
    h, _, s = token.split(".")
    _, claims = parts(token)
    claims["region"] = "100000"
    claims["realm_access"] = {"roles": ["admin"]}
    await expect(verifier, f"{h}.{b64json(claims)}.{s}", "invalid_token")


async def test_signed_by_another_key_with_real_kid(
    oidc_provider: DevOIDCProvider, verifier: TokenVerifier, token_factory: TokenFactory
) -> None:
    kid = parts(await token_factory("svc"))[0]["kid"]
    attacker = jwk.JWK.generate(kty="RSA", size=2048)
    forged = jws.JWS(json.dumps(claims_for(oidc_provider)).encode())
    forged.add_signature(attacker, alg="RS256", protected=json.dumps({"alg": "RS256", "kid": kid}))
    await expect(verifier, forged.serialize(compact=True), "invalid_token")


async def test_issuer_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    issuer = f"http://127.0.0.1:{port}/realms/gone"
    v = TokenVerifier(issuer, "lifeline")
    now = int(time.time())
    claims = {"iss": issuer, "aud": "lifeline", "sub": "x", "exp": now + 60}
    token = b64json({"alg": "RS256", "kid": "k"}) + "." + b64json(claims) + "." + b64(b"sig")
    await expect(v, token, "issuer_unavailable")
    await v.aclose()


# ---- key rotation -------------------------------------------------------------------------------


async def test_unknown_kid_after_rotation_refetches_once(
    oidc_provider: DevOIDCProvider, token_factory: TokenFactory
) -> None:
    v = TokenVerifier(oidc_provider.issuer, "lifeline", refetch_interval=0.5)
    old = await token_factory("svc")
    await v.verify(old)
    assert v.jwks_fetches == 1

    kid = await oidc_provider.rotate_keys()
    new = await token_factory("svc")
    assert parts(new)[0]["kid"] == kid != parts(old)[0]["kid"]

    await asyncio.sleep(0.6)  # past the refetch rate limit
    results = await asyncio.gather(*(v.verify(new) for _ in range(10)))
    assert {p.subject for p in results} == {"svc"}
    assert v.jwks_fetches == 2  # ten concurrent verifications, one refetch
    await v.verify(new)
    await v.verify(old)  # the previous key stays published for tokens already issued
    assert v.jwks_fetches == 2
    await v.aclose()


async def test_bogus_kids_are_rate_limited(oidc_provider: DevOIDCProvider, verifier: TokenVerifier) -> None:
    tokens = [
        b64json({"alg": "RS256", "kid": uuid.uuid4().hex})
        + "."
        + b64json(claims_for(oidc_provider))
        + "."
        + b64(b"sig")
        for _ in range(50)
    ]
    errors = await asyncio.gather(*(verifier.verify(t) for t in tokens), return_exceptions=True)
    assert all(isinstance(e, AuthError) and e.code == "unknown_key" for e in errors)
    assert verifier.jwks_fetches == 1  # the first fetch only; refetches are at most one per 10 s


# ---- region scope -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "code", "sees"),
    [
        ("100000", "100000", True),
        ("100000", "340100", True),
        ("100000", "650102", True),
        ("340000", "340000", True),
        ("340000", "340100", True),
        ("340000", "341523", True),
        ("340000", "350000", False),
        ("340000", "100000", False),
        ("340100", "340100", True),
        ("340100", "340102", True),
        ("340100", "340000", False),
        ("340100", "340200", False),
        ("340100", "100000", False),
        ("340102", "340102", True),
        ("340102", "340103", False),
        ("340102", "340100", False),
        (None, "340100", False),
        ("340100", "3401", False),
        ("340100", "34010x", False),
        ("34x100", "340100", False),
    ],
)
def test_region_scope(scope: str | None, code: str, sees: bool) -> None:
    assert region_contains(scope, code) is sees
    principal = Principal(subject="s", client_id="c", roles=frozenset(), region=scope)
    assert principal.sees(code) is sees


def test_principal_from_claims() -> None:
    p = Principal.from_claims({"sub": "u", "azp": "c", "realm_access": {"roles": ["a", 1]}, "region": ["340100"]})
    assert p.roles == frozenset({"a"}) and p.region == "340100" and p.client_id == "c"
    assert Principal.from_claims({"sub": "u", "region": "abc"}).region is None
    with pytest.raises(AuthError):
        Principal.from_claims({"region": "340100"})
    with pytest.raises(AuthError) as info:
        p.require_region("350000")
    assert info.value.code == "forbidden_region" and info.value.http_status == 403
    with pytest.raises(AuthError) as info:
        p.require_role("admin")
    assert info.value.code == "missing_role"
    assert hash(p) == hash(
        Principal.from_claims({"sub": "u", "azp": "c", "realm_access": {"roles": ["a"]}, "region": "340100"})
    )


# ---- FastAPI ------------------------------------------------------------------------------------


@pytest.fixture
async def api(verifier: TokenVerifier) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.state.token_verifier = verifier

    @app.get("/me")
    async def me(principal: PrincipalDep) -> dict[str, Any]:
        return {"sub": principal.subject, "region": principal.region, "roles": sorted(principal.roles)}

    @app.get("/admin")
    async def admin(principal: Principal = Depends(require_roles("admin"))) -> dict[str, str]:
        return {"sub": principal.subject}

    @app.get("/regions/{code}")
    async def region(code: str, principal: PrincipalDep) -> dict[str, str]:
        ensure_region(principal, code)
        return {"region": code}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        yield client


async def test_fastapi_dependency(api: httpx.AsyncClient, token_factory: TokenFactory) -> None:
    r = await api.get("/me")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "error=" not in r.headers["www-authenticate"]  # RFC 6750: no error code without credentials
    assert r.json()["detail"].startswith("missing_token: ")

    r = await api.get("/me", headers={"Authorization": "Bearer not-a-jwt"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith('Bearer error="invalid_token", error_description="')

    r = await api.get("/me", headers={"Authorization": "Bearer " + await token_factory("wrong-aud")})
    assert r.status_code == 401 and r.json()["detail"].startswith("wrong_audience: ")

    partner = {"Authorization": "Bearer " + await token_factory("partner-340100")}
    r = await api.get("/me", headers=partner)
    assert r.status_code == 200
    assert r.json() == {"sub": "partner-340100", "region": "340100", "roles": ["partner"]}

    r = await api.get("/admin", headers=partner)
    assert r.status_code == 403 and r.json()["detail"].startswith("missing_role: ")
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]

    r = await api.get("/admin", headers={"Authorization": "Bearer " + await token_factory("svc")})
    assert r.status_code == 200 and r.json() == {"sub": "svc"}

    assert (await api.get("/regions/340102", headers=partner)).status_code == 200
    r = await api.get("/regions/340200", headers=partner)
    assert r.status_code == 403 and r.json()["detail"].startswith("forbidden_region: ")
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]


# ---- gRPC ---------------------------------------------------------------------------------------


def _who() -> bytes:
    p = current_principal()
    return f"{p.subject}@{p.region}".encode()


async def _unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return _who()


def _sync_unary(request: bytes, context: Any) -> bytes:
    return _who()


async def _server_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for i in range(3):
        await asyncio.sleep(0)
        yield _who() + f"#{i}".encode()


async def _server_stream_writer(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.write(_who())
    await context.write(b"done")


async def _client_stream(requests: AsyncIterator[bytes], context: Any) -> bytes:
    n = 0
    async for _ in requests:
        n += 1
    return _who() + f" got {n}".encode()


async def _bidi(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for req in requests:
        yield _who() + b":" + req


async def _region_guarded(request: bytes, context: Any) -> bytes:
    current_principal().require_region(request.decode())
    return b"ok"


@pytest.fixture
async def grpc_channel(verifier: TokenVerifier) -> AsyncIterator[grpc.aio.Channel]:
    handlers = {
        "Who": grpc.unary_unary_rpc_method_handler(_unary),
        "SyncWho": grpc.unary_unary_rpc_method_handler(_sync_unary),
        "Stream": grpc.unary_stream_rpc_method_handler(_server_stream),
        "StreamWriter": grpc.unary_stream_rpc_method_handler(_server_stream_writer),
        "Count": grpc.stream_unary_rpc_method_handler(_client_stream),
        "Echo": grpc.stream_stream_rpc_method_handler(_bidi),
        "Guarded": grpc.unary_unary_rpc_method_handler(_region_guarded),
    }
    server = grpc.aio.server(interceptors=[AuthInterceptor(verifier)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Auth", handlers),))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(grace=None)


async def _requests(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def test_grpc_unauthenticated(grpc_channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await grpc_channel.unary_unary("/test.Auth/Who")(b"")
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization" in (info.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await grpc_channel.unary_unary("/test.Auth/Who")(b"", metadata=(("authorization", "Bearer x.y.z"),))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (info.value.details() or "").startswith("invalid_token")

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await grpc_channel.stream_unary("/test.Auth/Count")(_requests(b"a"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in grpc_channel.unary_stream("/test.Auth/Stream")(b""):
            pass
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # Health checks stay public.
    health_stub = health_pb2_grpc.HealthStub(grpc_channel)
    reply = await health_stub.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_grpc_all_kinds_see_principal(grpc_channel: grpc.aio.Channel, token_factory: TokenFactory) -> None:
    md = (("authorization", "Bearer " + await token_factory("partner-340100")),)
    who = b"partner-340100@340100"

    assert await grpc_channel.unary_unary("/test.Auth/Who")(b"", metadata=md) == who
    assert await grpc_channel.unary_unary("/test.Auth/SyncWho")(b"", metadata=md) == who
    got = [m async for m in grpc_channel.unary_stream("/test.Auth/Stream")(b"", metadata=md)]
    assert got == [who + b"#0", who + b"#1", who + b"#2"]
    got = [m async for m in grpc_channel.unary_stream("/test.Auth/StreamWriter")(b"", metadata=md)]
    assert got == [who, b"done"]
    reply = await grpc_channel.stream_unary("/test.Auth/Count")(_requests(b"a", b"b", b"c"), metadata=md)
    assert reply == who + b" got 3"
    got = [m async for m in grpc_channel.stream_stream("/test.Auth/Echo")(_requests(b"1", b"2"), metadata=md)]
    assert got == [who + b":1", who + b":2"]


async def test_grpc_principals_do_not_leak_between_calls(
    grpc_channel: grpc.aio.Channel, token_factory: TokenFactory
) -> None:
    tokens = {c: await token_factory(c) for c in ("svc", "partner-340100", "viewer-340200", "ministry")}
    call = grpc_channel.unary_unary("/test.Auth/Who")
    replies = await asyncio.gather(
        *(call(b"", metadata=(("authorization", f"Bearer {t}"),)) for c, t in list(tokens.items()) * 5)
    )
    assert [r.split(b"@")[0].decode() for r in replies] == list(tokens) * 5


async def test_grpc_permission_denied(grpc_channel: grpc.aio.Channel, token_factory: TokenFactory) -> None:
    md = (("authorization", "Bearer " + await token_factory("partner-340100")),)
    assert await grpc_channel.unary_unary("/test.Auth/Guarded")(b"340102", metadata=md) == b"ok"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await grpc_channel.unary_unary("/test.Auth/Guarded")(b"350000", metadata=md)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (info.value.details() or "").startswith("forbidden_region")


def test_current_principal_outside_call() -> None:
    with pytest.raises(AuthError):
        current_principal()


# ---- client credentials -------------------------------------------------------------------------


async def test_client_credentials_caches(oidc_provider: DevOIDCProvider, verifier: TokenVerifier) -> None:
    creds = ClientCredentials(oidc_provider.issuer, "svc", oidc_provider.secret("svc"))
    first, *rest = await asyncio.gather(*(creds.token() for _ in range(5)))
    assert set(rest) == {first}
    assert await creds.token() == first
    assert creds.token_requests == 1
    assert (await verifier.verify(first)).subject == "svc"
    assert await creds.authorization() == f"Bearer {first}"
    creds.invalidate()
    await creds.token()
    assert creds.token_requests == 2
    await creds.aclose()


async def test_client_credentials_refreshes_before_expiry(
    oidc_provider: DevOIDCProvider, verifier: TokenVerifier
) -> None:
    creds = ClientCredentials(oidc_provider.issuer, "short-ttl", oidc_provider.secret("short-ttl"))
    first = await creds.token()
    assert await creds.token() == first and creds.token_requests == 1
    # TTL 2 s: refreshed a quarter of the lifetime (0.5 s) early, i.e. after ~1.5 s.
    await asyncio.sleep(1.6)
    second = await creds.token()
    assert creds.token_requests == 2 and second != first
    assert (await verifier.verify(second)).subject == "short-ttl"
    await creds.aclose()


async def test_client_credentials_wrong_secret(oidc_provider: DevOIDCProvider) -> None:
    creds = ClientCredentials(oidc_provider.issuer, "svc", "not-the-secret")
    with pytest.raises(TokenRequestError):
        await creds.token()
    await creds.aclose()
    with pytest.raises(ValueError):
        ClientCredentials("https://accounts.example.com", "a", "b")


async def test_repeated_token_is_verified_once_but_expiry_still_counts(oidc_provider, token_factory) -> None:
    """A cached verification never outlives the token's expiry."""
    import asyncio as _asyncio

    from lifeline.kit.auth import AuthError as _AuthError
    from lifeline.kit.auth import TokenVerifier as _TokenVerifier

    verifier = _TokenVerifier(oidc_provider.issuer, oidc_provider.audience, leeway=0)
    try:
        token = await token_factory("short-ttl")
        first = await verifier.verify(token)
        fetches = verifier.jwks_fetches
        assert await verifier.verify(token) == first
        # The header of a verified token is answered from the cache too, however it is spelt.
        for header in (f"Bearer {token}", f"bearer {token}", f"  Bearer   {token} "):
            assert await verifier.verify_authorization(header) == first
        assert verifier.jwks_fetches == fetches
        await _asyncio.sleep(3)
        for check in (lambda: verifier.verify(token), lambda: verifier.verify_authorization(f"Bearer {token}")):
            try:
                await check()
            except _AuthError as exc:
                assert exc.code == "expired"
            else:
                raise AssertionError("an expired token was accepted from the cache")
    finally:
        await verifier.aclose()
