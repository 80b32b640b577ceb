"""lifeline.kit.problems and lifeline.kit.i18n: RFC 9457 responses from a real server, in both languages."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from lifeline.kit import i18n
from lifeline.kit.http import serve_http
from lifeline.kit.problems import (
    PROBLEM_MEDIA_TYPE,
    FieldError,
    ProblemError,
    install_problem_handlers,
    problem_from_proto,
    problem_to_proto,
)
from lifeline.v1 import common_pb2

SECRET = "postgres://lifeline:hunter2@db.internal:5432/ingest"

i18n.register(
    {
        "test.sensor_exists": {"zh-CN": "传感器已存在", "en": "Sensor already exists"},
        "test.sensor_exists.detail": {
            "zh-CN": "传感器 {sensor_id} 已登记",
            "en": "Sensor {sensor_id} is registered",
        },
    }
)


class SensorIn(BaseModel):
    sensor_id: str = Field(min_length=3)
    interval_s: int = Field(gt=0)


def make_app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/sensors")
    async def create_sensor(sensor: SensorIn) -> dict[str, str]:
        raise ProblemError(
            409,
            "test.sensor_exists",
            detail="test.sensor_exists.detail",
            params={"sensor_id": sensor.sensor_id},
            errors=[FieldError("sensor_id", "duplicate", "test.sensor_exists")],
        )

    @app.get("/busy")
    async def busy() -> None:
        raise ProblemError(503, detail="problem.service_unavailable.detail", retry_after=7)

    @app.get("/private")
    async def private() -> None:
        raise HTTPException(401, headers={"WWW-Authenticate": 'Bearer realm="lifeline"'})

    @app.get("/forbidden")
    async def forbidden() -> None:
        raise HTTPException(403, detail="only operators of 340100")

    @app.get("/items/{item_id}")
    async def item(item_id: int, limit: int = 10) -> dict[str, int]:
        return {"item_id": item_id, "limit": limit}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(f"could not connect to {SECRET}")

    @app.get("/empty")
    async def empty() -> None:
        raise HTTPException(304)

    return app


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    server = await serve_http(make_app(), "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            yield client
    finally:
        await server.stop()


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert str(body["type"]).startswith("https://lifeline.dev/problems/")
    return body


async def test_problem_error_in_chinese_by_default_and_english_on_request(client: httpx.AsyncClient) -> None:
    payload = {"sensor_id": "GAS-001", "interval_s": 60}
    zh = assert_problem(await client.post("/sensors", json=payload), 409)
    assert zh["title"] == "传感器已存在"
    assert zh["detail"] == "传感器 GAS-001 已登记"
    assert zh["type"] == "https://lifeline.dev/problems/test-sensor-exists"
    assert zh["instance"] == "/sensors"
    assert zh["errors"] == [{"field": "sensor_id", "code": "duplicate", "reason": "传感器已存在"}]

    response = await client.post("/sensors", json=payload, headers={"Accept-Language": "en"})
    en = assert_problem(response, 409)
    assert response.headers["content-language"] == "en"
    assert en["title"] == "Sensor already exists"
    assert en["detail"] == "Sensor GAS-001 is registered"
    assert en["errors"] == [{"field": "sensor_id", "code": "duplicate", "reason": "Sensor already exists"}]


async def test_retry_after_is_sent_with_service_unavailable(client: httpx.AsyncClient) -> None:
    response = await client.get("/busy", headers={"Accept-Language": "en-GB,en;q=0.9"})
    body = assert_problem(response, 503)
    assert response.headers["retry-after"] == "7"
    assert body["title"] == "Service unavailable"
    assert body["detail"] == "The service cannot handle the request right now; retry in 7 s."
    assert body["type"] == "https://lifeline.dev/problems/service-unavailable"


async def test_http_exception_keeps_its_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/private")
    body = assert_problem(response, 401)
    assert response.headers["www-authenticate"] == 'Bearer realm="lifeline"'
    assert body["title"] == "未认证或认证已失效"
    assert "detail" not in body, "the reason phrase would only repeat the title"

    body = assert_problem(await client.get("/forbidden", headers={"Accept-Language": "en"}), 403)
    assert body["title"] == "Forbidden"
    assert body["detail"] == "only operators of 340100"


async def test_unknown_route_and_method_are_problems(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/nowhere"), 404)
    assert body["title"] == "资源不存在"
    assert body["type"] == "https://lifeline.dev/problems/not-found"
    response = await client.delete("/busy", headers={"Accept-Language": "en"})
    body = assert_problem(response, 405)
    assert body["title"] == "Method not allowed"
    assert "GET" in response.headers["allow"]


async def test_validation_errors_list_every_field(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/items/abc", params={"limit": "x"}), 422)
    assert body["title"] == "请求参数校验失败"
    assert body["detail"] == "请求中有 2 处错误，详见 errors。"
    assert body["errors"] == [
        {"field": "path.item_id", "code": "int_parsing", "reason": "应为整数"},
        {"field": "query.limit", "code": "int_parsing", "reason": "应为整数"},
    ]

    response = await client.post(
        "/sensors", json={"sensor_id": "G", "interval_s": 0, "extra": [1]}, headers={"Accept-Language": "en"}
    )
    body = assert_problem(response, 422)
    assert body["title"] == "Validation failed"
    assert body["errors"] == [
        {"field": "body.sensor_id", "code": "string_too_short", "reason": "At least 3 character(s) required"},
        {"field": "body.interval_s", "code": "greater_than", "reason": "Must be greater than 0"},
    ]

    body = assert_problem(await client.post("/sensors", json=[{"sensor_id": "GAS-1"}]), 422)
    errors = body["errors"]
    assert isinstance(errors, list) and errors[0]["field"] == "body"


async def test_unhandled_error_is_a_500_without_internals(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="lifeline.kit.problems"):
        response = await client.get("/boom")
    body = assert_problem(response, 500)
    assert body["title"] == "服务器内部错误"
    for leak in ("hunter2", "db.internal", "RuntimeError", "Traceback", "could not connect"):
        assert leak not in response.text
    reference = body["trace_id"]
    assert isinstance(reference, str) and reference in str(body["detail"])

    logged = [r for r in caplog.records if r.name == "lifeline.kit.problems"]
    assert logged and logged[0].exc_info is not None
    assert "hunter2" in str(logged[0].exc_info[1]), "the log keeps what the client must not see"

    en = assert_problem(await client.get("/boom", headers={"Accept-Language": "en"}), 500)
    assert en["title"] == "Internal server error"


async def test_statuses_without_a_body_stay_empty(client: httpx.AsyncClient) -> None:
    response = await client.get("/empty")
    assert response.status_code == 304
    assert response.content == b""


def test_problem_maps_to_proto_and_back() -> None:
    problem = ProblemError(
        422,
        detail="problem.validation_failed.detail",
        params={"count": 1},
        errors=[{"field": "readings[0].value", "code": "not_finite", "reason": "validation.finite_number"}],
        instance="/v1/readings",
    )
    message = problem_to_proto(problem, lang="en")
    assert message == common_pb2.Problem(
        type="https://lifeline.dev/problems/validation-failed",
        title="Validation failed",
        status=422,
        detail="The request has 1 error(s); see errors.",
        instance="/v1/readings",
        errors=[
            common_pb2.FieldViolation(field="readings[0].value", code="not_finite", reason="Finite number expected")
        ],
    )
    assert problem.to_proto("zh-CN").title == "请求参数校验失败"

    relayed = problem_from_proto(message)
    assert relayed.status == 422
    assert relayed.render("zh-CN")["title"] == "Validation failed", "a relayed problem keeps its rendered text"
    assert problem_to_proto(relayed.render("en")) == message


def test_problem_type_and_title_defaults() -> None:
    assert ProblemError(404).type_uri == "https://lifeline.dev/problems/not-found"
    assert ProblemError(404, slug="sensor-missing").type_uri == "https://lifeline.dev/problems/sensor-missing"
    teapot = ProblemError(418)
    assert teapot.type_uri == "about:blank"
    assert teapot.render("en")["title"] == "I'm a Teapot"
    literal = ProblemError(400, "传感器编号格式错误")
    assert literal.render("en")["title"] == "传感器编号格式错误"
    assert literal.type_uri == "https://lifeline.dev/problems/bad-request"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "zh-CN"),
        ("", "zh-CN"),
        ("en", "en"),
        ("en-US,en;q=0.9", "en"),
        ("fr-FR, en;q=0.5, zh;q=0.8", "zh-CN"),
        ("zh-TW", "zh-CN"),
        ("fr, de;q=0.9", "zh-CN"),
        ("*", "zh-CN"),
        ("en;q=0, zh-CN;q=0.1", "zh-CN"),
        ("en;q=0", "zh-CN"),
        ("EN_us", "en"),
        ("en;q=abc, zh", "zh-CN"),
    ],
)
def test_negotiate_accept_language(header: str | None, expected: str) -> None:
    assert i18n.negotiate(header) == expected


def test_negotiate_default_and_translation_fallbacks() -> None:
    assert i18n.negotiate("fr", default="en") == "en"
    assert i18n.t("problem.not_found", "en") == "Not found"
    assert i18n.t("problem.not_found", "fr") == "资源不存在"
    assert i18n.t("no.such.key", "en") == "no.such.key"
    assert i18n.t("test.sensor_exists.detail", "en") == "Sensor {sensor_id} is registered"
    assert i18n.t("test.sensor_exists.detail", "en", wrong="x") == "Sensor {sensor_id} is registered"


def test_register_refuses_conflicting_text() -> None:
    i18n.register({"test.sensor_exists": {"zh-CN": "传感器已存在", "en": "Sensor already exists"}})
    with pytest.raises(ValueError, match="already registered"):
        i18n.register({"test.sensor_exists": {"zh-CN": "别的"}})
    with pytest.raises(ValueError, match="zh-CN"):
        i18n.register({"test.english_only": {"en": "English only"}})
    with pytest.raises(ValueError, match="unsupported"):
        i18n.register({"test.french": {"zh-CN": "中文", "fr": "Français"}})
    i18n.register({"test.sensor_exists": {"zh-CN": "传感器重复", "en": "Duplicate sensor"}}, override=True)
    assert i18n.t("test.sensor_exists", "en") == "Duplicate sensor"
    i18n.register({"test.sensor_exists": {"zh-CN": "传感器已存在", "en": "Sensor already exists"}}, override=True)
