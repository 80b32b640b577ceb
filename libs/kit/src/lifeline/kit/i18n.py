"""User-facing text: Simplified Chinese by default, English available.

Messages live in one catalogue keyed by message key, then language. Services add their own keys with
:func:`register` at import or start-up; :func:`t` renders a key in a language and :func:`negotiate` picks
the language from an ``Accept-Language`` header.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

DEFAULT_LANGUAGE: Final = "zh-CN"
LANGUAGES: Final = ("zh-CN", "en")

_log = logging.getLogger(__name__)

MESSAGES: dict[str, dict[str, str]] = {
    # Generic problem titles (RFC 9457 "title"): short, stable, no request specifics.
    "problem.bad_request": {"zh-CN": "请求无效", "en": "Bad request"},
    "problem.validation_failed": {"zh-CN": "请求参数校验失败", "en": "Validation failed"},
    "problem.unauthorized": {"zh-CN": "未认证或认证已失效", "en": "Unauthorized"},
    "problem.forbidden": {"zh-CN": "无权访问", "en": "Forbidden"},
    "problem.not_found": {"zh-CN": "资源不存在", "en": "Not found"},
    "problem.method_not_allowed": {"zh-CN": "不支持该请求方法", "en": "Method not allowed"},
    "problem.not_acceptable": {"zh-CN": "无法提供所请求的格式", "en": "Not acceptable"},
    "problem.conflict": {"zh-CN": "与当前状态冲突", "en": "Conflict"},
    "problem.gone": {"zh-CN": "资源已不存在", "en": "Gone"},
    "problem.precondition_failed": {"zh-CN": "前置条件不满足", "en": "Precondition failed"},
    "problem.payload_too_large": {"zh-CN": "请求内容过大", "en": "Payload too large"},
    "problem.unsupported_media_type": {"zh-CN": "不支持的内容类型", "en": "Unsupported media type"},
    "problem.too_many_requests": {"zh-CN": "请求过于频繁", "en": "Too many requests"},
    "problem.internal_error": {"zh-CN": "服务器内部错误", "en": "Internal server error"},
    "problem.not_implemented": {"zh-CN": "功能尚未实现", "en": "Not implemented"},
    "problem.service_unavailable": {"zh-CN": "服务暂不可用", "en": "Service unavailable"},
    "problem.gateway_timeout": {"zh-CN": "上游服务超时", "en": "Gateway timeout"},
    # Generic problem details.
    "problem.internal_error.detail": {
        "zh-CN": "处理请求时发生意外错误，请稍后重试；如问题持续，请提供追踪号 {trace_id} 联系管理员。",
        "en": "An unexpected error occurred; please retry later. If it persists, "
        "contact the administrator with trace id {trace_id}.",
    },
    "problem.validation_failed.detail": {
        "zh-CN": "请求中有 {count} 处错误，详见 errors。",
        "en": "The request has {count} error(s); see errors.",
    },
    "problem.service_unavailable.detail": {
        "zh-CN": "服务暂时无法处理请求，请在 {retry_after} 秒后重试。",
        "en": "The service cannot handle the request right now; retry in {retry_after} s.",
    },
    # Field reasons for the most common pydantic error types; others keep pydantic's English message.
    "validation.missing": {"zh-CN": "缺少必填字段", "en": "Field required"},
    "validation.extra_forbidden": {"zh-CN": "不允许的多余字段", "en": "Extra field not permitted"},
    "validation.json_invalid": {"zh-CN": "JSON 格式错误", "en": "Invalid JSON"},
    "validation.json_type": {"zh-CN": "应为 JSON 数据", "en": "JSON input expected"},
    "validation.model_attributes_type": {"zh-CN": "应为对象", "en": "Object expected"},
    "validation.dict_type": {"zh-CN": "应为对象", "en": "Object expected"},
    "validation.list_type": {"zh-CN": "应为数组", "en": "Array expected"},
    "validation.string_type": {"zh-CN": "应为字符串", "en": "String expected"},
    "validation.int_type": {"zh-CN": "应为整数", "en": "Integer expected"},
    "validation.int_parsing": {"zh-CN": "应为整数", "en": "Integer expected"},
    "validation.int_from_float": {
        "zh-CN": "应为整数，不能有小数部分",
        "en": "Integer without fraction expected",
    },
    "validation.float_type": {"zh-CN": "应为数值", "en": "Number expected"},
    "validation.float_parsing": {"zh-CN": "应为数值", "en": "Number expected"},
    "validation.finite_number": {"zh-CN": "应为有限数值", "en": "Finite number expected"},
    "validation.bool_type": {"zh-CN": "应为布尔值", "en": "Boolean expected"},
    "validation.bool_parsing": {"zh-CN": "应为布尔值", "en": "Boolean expected"},
    "validation.datetime_type": {"zh-CN": "应为日期时间", "en": "Datetime expected"},
    "validation.datetime_parsing": {"zh-CN": "日期时间格式错误", "en": "Invalid datetime"},
    "validation.datetime_from_date_parsing": {"zh-CN": "日期时间格式错误", "en": "Invalid datetime"},
    "validation.date_parsing": {"zh-CN": "日期格式错误", "en": "Invalid date"},
    "validation.date_from_datetime_parsing": {"zh-CN": "日期格式错误", "en": "Invalid date"},
    "validation.uuid_parsing": {"zh-CN": "UUID 格式错误", "en": "Invalid UUID"},
    "validation.enum": {"zh-CN": "取值应为 {expected} 之一", "en": "Input should be {expected}"},
    "validation.literal_error": {"zh-CN": "取值应为 {expected} 之一", "en": "Input should be {expected}"},
    "validation.string_too_short": {
        "zh-CN": "长度至少为 {min_length} 个字符",
        "en": "At least {min_length} character(s) required",
    },
    "validation.string_too_long": {
        "zh-CN": "长度至多为 {max_length} 个字符",
        "en": "At most {max_length} character(s) allowed",
    },
    "validation.string_pattern_mismatch": {
        "zh-CN": "格式不符合要求（{pattern}）",
        "en": "Does not match the pattern {pattern}",
    },
    "validation.too_short": {
        "zh-CN": "至少需要 {min_length} 项",
        "en": "At least {min_length} item(s) required",
    },
    "validation.too_long": {
        "zh-CN": "至多允许 {max_length} 项",
        "en": "At most {max_length} item(s) allowed",
    },
    "validation.greater_than": {"zh-CN": "应大于 {gt}", "en": "Must be greater than {gt}"},
    "validation.greater_than_equal": {"zh-CN": "应大于或等于 {ge}", "en": "Must be at least {ge}"},
    "validation.less_than": {"zh-CN": "应小于 {lt}", "en": "Must be less than {lt}"},
    "validation.less_than_equal": {"zh-CN": "应小于或等于 {le}", "en": "Must be at most {le}"},
}


def _normalize(lang: str | None) -> str | None:
    """Map a language tag to a supported language, or None if none fits."""
    if not lang:
        return None
    tag = lang.strip().replace("_", "-").lower()
    # Every Chinese variant gets Simplified Chinese: it is the only Chinese we have, and it serves a
    # zh-TW reader better than English would.
    if tag == "zh" or tag.startswith("zh-"):
        return "zh-CN"
    if tag == "en" or tag.startswith("en-"):
        return "en"
    return None


def has(key: str) -> bool:
    """Whether the catalogue knows the message key."""
    return key in MESSAGES


def t(key: str, lang: str | None = DEFAULT_LANGUAGE, /, **params: Any) -> str:
    """Render a message key in a language (falls back to zh-CN, then to the key itself)."""
    entry = MESSAGES.get(key)
    if entry is None:
        # Callers may pass literal text where a key is expected; it is shown as given.
        template = key
    else:
        chosen = _normalize(lang) or DEFAULT_LANGUAGE
        template = entry.get(chosen) or entry.get(DEFAULT_LANGUAGE) or key
    if not params:
        return template
    try:
        return template.format(**params)
    except (KeyError, IndexError, ValueError, AttributeError):
        # A missing parameter must not turn an error report into a second error.
        _log.warning("message %r could not be formatted with %s", key, sorted(params))
        return template


def negotiate(accept_language: str | None, default: str = DEFAULT_LANGUAGE) -> str:
    """Pick a supported language from an Accept-Language header (RFC 9110 q-values), else ``default``."""
    if not accept_language:
        return default
    ranges: list[tuple[float, int, str]] = []
    for position, item in enumerate(accept_language.split(",")):
        parts = [p.strip() for p in item.split(";")]
        tag = parts[0]
        if not tag:
            continue
        quality = 1.0
        for param in parts[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        if quality > 0:
            # Stable order among equal q-values: the client listed its favourite first.
            ranges.append((-quality, position, tag))
    for _, _, tag in sorted(ranges):
        if tag == "*":
            return default
        chosen = _normalize(tag)
        if chosen is not None:
            return chosen
    return default


def register(messages: Mapping[str, Mapping[str, str]], *, override: bool = False) -> None:
    """Add a service's messages to the catalogue; a key already present with other text is an error."""
    for key, texts in messages.items():
        unknown = set(texts) - set(LANGUAGES)
        if unknown:
            raise ValueError(f"message {key!r} has unsupported languages {sorted(unknown)}")
        if DEFAULT_LANGUAGE not in texts:
            raise ValueError(f"message {key!r} needs a {DEFAULT_LANGUAGE} text")
        existing = MESSAGES.get(key)
        if existing is not None and not override and existing != dict(texts):
            raise ValueError(f"message {key!r} is already registered with different text")
    for key, texts in messages.items():
        MESSAGES[key] = dict(texts)
