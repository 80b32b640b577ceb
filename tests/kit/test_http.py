"""lifeline.kit.http: probes, metrics and embedded uvicorn servers, over real sockets."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import context as otel_context
from opentelemetry import propagate
from prometheus_client import Counter

from lifeline.kit.config import InstanceSettings
from lifeline.kit.http import create_http_app, serve_http
from lifeline.kit.telemetry import get_meter, setup_telemetry


async def test_healthz_and_readyz_follow_the_checks() -> None:
    database_up = True

    async def database() -> bool:
        return database_up

    app = create_http_app(title="demo", version="1.0", readiness={"database": database})
    server = await serve_http(app, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}

            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json() == {"status": "ready", "checks": {"database": "ok"}}

            database_up = False
            not_ready = await client.get("/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json() == {
                "status": "not ready",
                "checks": {"database": "failing"},
                "failing": ["database"],
            }
            assert (await client.get("/healthz")).status_code == 200, "liveness does not depend on readiness"

            database_up = True

            async def bus() -> bool:
                raise ConnectionError("nats down")

            app.state.readiness["bus"] = bus
            body = (await client.get("/readyz")).json()
            assert body["checks"] == {"database": "ok", "bus": "error"}
            assert body["failing"] == ["bus"]
    finally:
        await server.stop()


async def test_slow_readiness_check_times_out() -> None:
    async def stuck() -> bool:
        await asyncio.sleep(30)
        return True

    app = create_http_app(title="demo", version="1.0", readiness={"stuck": stuck}, readiness_timeout=0.2)
    server = await serve_http(app, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"] == {"stuck": "timeout"}
    finally:
        await server.stop()


async def test_metrics_expose_counters_you_increment() -> None:
    setup_telemetry(InstanceSettings())
    suffix = uuid.uuid4().hex[:8]
    plain = Counter(f"lifeline_test_plain_{suffix}", "A prometheus_client counter")
    plain.inc(3)
    otel = get_meter("lifeline.test").create_counter(f"lifeline.test.otel_{suffix}", description="An OTel counter")
    otel.add(5, {"region": "340100"})

    app = create_http_app(title="demo", version="1.0")
    server = await serve_http(app, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.get("/metrics")
    finally:
        await server.stop()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert f"lifeline_test_plain_{suffix}_total 3.0" in response.text
    line = next(x for x in response.text.splitlines() if x.startswith(f"lifeline_test_otel_{suffix}_total{{"))
    assert 'region="340100"' in line and line.endswith(" 5.0")


async def test_serve_http_binds_port_zero_and_stops_gracefully() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = create_http_app(title="demo", version="1.0", lifespan=lifespan)
    request_started = asyncio.Event()

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        request_started.set()
        await asyncio.sleep(0.5)
        return {"status": "done"}

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    first = await serve_http(app, "127.0.0.1", 0)
    second = await serve_http(create_http_app(title="other", version="1.0"), "127.0.0.1", 0)
    assert first.port > 0 and second.port > 0 and first.port != second.port
    assert first.url == f"http://127.0.0.1:{first.port}"
    assert events == ["startup"]
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers, "signals belong to the launcher"

    async with httpx.AsyncClient(base_url=first.url) as client:
        in_flight = asyncio.create_task(client.get("/slow"))
        await request_started.wait()
        await first.stop()
        response = await in_flight
    assert response.json() == {"status": "done"}, "a request in flight finishes before the server stops"
    assert events == ["startup", "shutdown"]
    assert first.task.done()
    await first.stop()

    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=first.url) as client:
            await client.get("/healthz")
    async with httpx.AsyncClient(base_url=second.url) as client:
        assert (await client.get("/healthz")).status_code == 200, "other servers of the process keep serving"
    await second.stop()


async def test_serve_http_reports_a_taken_port_instead_of_exiting() -> None:
    first = await serve_http(create_http_app(title="demo", version="1.0"), "127.0.0.1", 0)
    try:
        with pytest.raises(RuntimeError, match="failed to start"):
            await serve_http(create_http_app(title="demo", version="1.0"), "127.0.0.1", first.port)
    finally:
        await first.stop()


async def test_serve_http_reports_a_failing_lifespan() -> None:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        raise ConnectionError("database unreachable")
        yield

    with pytest.raises(RuntimeError, match="failed to start"):
        await serve_http(create_http_app(title="demo", version="1.0", lifespan=lifespan), "127.0.0.1", 0)


async def test_fast_route_answers_ahead_of_fastapi_with_the_same_problems_and_a_server_span() -> None:
    from fastapi import HTTPException
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from lifeline.kit.http import FastRequest, FastResponse, add_fast_route
    from lifeline.kit.problems import ProblemError

    exporter = InMemorySpanExporter()
    setup_telemetry(InstanceSettings(log_json=True), span_exporter=exporter)
    app = create_http_app(title="fast", version="1.0")

    @app.post("/echo")
    async def slow_echo() -> dict[str, str]:
        return {"via": "fastapi"}

    @app.get("/echo")
    async def get_echo() -> dict[str, str]:
        return {"via": "fastapi"}

    async def echo(request: FastRequest) -> FastResponse:
        body = await request.body(8, lambda limit: ProblemError(413, detail=f"more than {limit} bytes"))
        if body == b"busy":
            raise ProblemError(503, detail="problem.service_unavailable", retry_after=3)
        if body == b"who":
            raise HTTPException(401, detail="missing_token: no token", headers={"WWW-Authenticate": "Bearer"})
        if body == b"boom":
            raise RuntimeError("bug")
        own = b"true" if request.app is app else b"false"
        return FastResponse(
            b'{"via":"fast","body":"' + body + b'","client":"' + str(request.client).encode() + b'","app":' + own + b"}"
        )

    add_fast_route(app, "POST", "/echo", echo)
    server = await serve_http(app, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            caller = {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"}
            # The caller's context made current too: where httpx is instrumented (setup_telemetry does it
            # process-wide) the client span it injects then carries the same trace.
            token = otel_context.attach(propagate.extract(caller))
            try:
                ok = await client.post("/echo", content=b"hi", headers=caller)
            finally:
                otel_context.detach(token)
            assert ok.status_code == 200 and ok.json()["via"] == "fast" and ok.json()["body"] == "hi"
            assert ok.json()["client"].startswith("127.0.0.1:")
            # serve_http dispatches fast routes ahead of FastAPI.__call__: the handler still sees its app.
            assert ok.json()["app"] is True
            assert (await client.get("/echo")).json() == {"via": "fastapi"}, "other methods go to FastAPI"

            busy = await client.post("/echo", content=b"busy", headers={"Accept-Language": "en"})
            assert busy.status_code == 503 and busy.headers["Retry-After"] == "3"
            assert busy.headers["content-type"] == "application/problem+json"
            assert busy.headers["Content-Language"] == "en" and busy.json()["instance"] == "/echo"
            assert (await client.post("/echo", content=b"busy")).headers["Content-Language"] == "zh-CN"

            who = await client.post("/echo", content=b"who")
            assert who.status_code == 401 and who.headers["WWW-Authenticate"] == "Bearer"
            assert who.json()["detail"] == "missing_token: no token"

            big = await client.post("/echo", content=b"x" * 100)
            assert big.status_code == 413 and big.json()["detail"] == "more than 8 bytes"

            boom = await client.post("/echo", content=b"boom")
            assert boom.status_code == 500 and len(boom.json()["trace_id"]) == 32
    finally:
        await server.stop()
    spans = [s for s in exporter.get_finished_spans() if s.name == "POST /echo"]
    assert len(spans) == 6 and all(s.kind == SpanKind.SERVER for s in spans)
    assert spans[0].context.trace_id == int("ab" * 16, 16), "the caller's trace continues"
    assert spans[0].attributes["http.status_code"] == 200
    assert [s.status.is_ok for s in spans] == [True, False, False, True, True, False], "5xx are errors"


class _CountingTransport:
    """Forwards to a real transport and counts the writes that reach it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.transport.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.transport, name)


async def test_writes_of_one_turn_leave_as_one_and_closing_sends_what_is_pending() -> None:
    from lifeline.kit.http import _CoalescingTransport

    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[asyncio.Transport] = loop.create_future()

    class Accept(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.set_result(transport)  # type: ignore[arg-type]

    server = await loop.create_server(Accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        counting = _CountingTransport(await accepted)
        transport = _CoalescingTransport(counting, loop)  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(b"ok")
        assert counting.writes == 0 and transport.get_write_buffer_size() == 40
        await asyncio.sleep(0)
        assert counting.writes == 1, "head and body in one send"
        assert await reader.readexactly(40) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        # A large write goes at once: the transport's own flow control must see it.
        big = b"x" * _CoalescingTransport.FLUSH_BYTES
        transport.write(big)
        assert counting.writes == 2 and transport.get_write_buffer_size() == counting.get_write_buffer_size()
        assert await reader.readexactly(len(big)) == big
        # A response followed by close (Connection: close) is sent whole before the connection ends.
        transport.write(b"bye")
        transport.close()
        assert await reader.read() == b"bye"
        transport.write(b"late")  # after close: dropped, no error
        await asyncio.sleep(0)
        assert counting.writes == 3
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def test_keep_alive_and_closing_requests_get_whole_answers_from_a_real_server() -> None:
    app = create_http_app(title="t", version="1")

    @app.post("/echo")
    async def echo(body: dict[str, str]) -> dict[str, str]:
        return body

    server = await serve_http(app, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        request = (
            b'POST /echo HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\n{"a":"b"}'
        )
        for _ in range(3):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"content-length: 9" in head
            assert await reader.readexactly(9) == b'{"a":"b"}'
        writer.write(request.replace(b"host: t\r\n", b"host: t\r\nconnection: close\r\n"))
        last = await reader.read()  # until the server closes the connection
        assert last.startswith(b"HTTP/1.1 200") and last.endswith(b'{"a":"b"}')
        writer.close()
    finally:
        await server.stop()


async def test_servers_with_reuse_port_share_a_port_and_the_connections() -> None:
    # Two processes of a service on one host (here two servers of one process) take turns on its port.
    def app(name: str) -> FastAPI:
        a = create_http_app(title=name, version="1.0")

        @a.get("/who")
        async def who() -> dict[str, str]:
            return {"name": name}

        return a

    first = await serve_http(app("first"), "127.0.0.1", 0, reuse_port=True)
    second = await serve_http(app("second"), "127.0.0.1", first.port, reuse_port=True)
    try:
        assert second.port == first.port
        seen = set()
        for _ in range(40):  # a new connection each time: the kernel picks a listener per connection
            async with httpx.AsyncClient(base_url=first.url) as client:
                seen.add((await client.get("/who")).json()["name"])
        assert seen == {"first", "second"}
        # A server without the option still cannot take the port.
        with pytest.raises(RuntimeError, match="failed to start"):
            await serve_http(app("third"), "127.0.0.1", first.port)
        await first.stop()
        for _ in range(5):
            async with httpx.AsyncClient(base_url=second.url) as client:
                assert (await client.get("/who")).json() == {"name": "second"}
    finally:
        await first.stop()
        await second.stop()
