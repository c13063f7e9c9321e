"""consumer-restriction: allow or deny by consumer name, consumer group, route or service.

APISIX semantics: the value for ``type`` (``consumer_name`` by default) missing is
``401 {"message":"The request is rejected, please check the <type> for this request"}``.
A value in ``blacklist`` is rejected; with a ``whitelist`` a value outside it is rejected;
``allowed_by_methods`` (per user) rejects a method not listed for that user unless the
value is whitelisted. Rejections answer ``rejected_code`` (403) with
``{"message": rejected_msg}`` or ``{"message":"The <type> is forbidden."}``.
"""

from __future__ import annotations

from typing import Any

NAME = "consumer-restriction"
PRIORITY = 2400
VERSION = "0.1"

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE"]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "type": {
            "type": "string",
            "enum": ["consumer_name", "service_id", "route_id", "consumer_group_id"],
            "default": "consumer_name",
        },
        "blacklist": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "whitelist": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "allowed_by_methods": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "user": {"type": "string"},
                    "methods": {"type": "array", "minItems": 1, "items": {"type": "string", "enum": METHODS}},
                },
            },
        },
        "rejected_code": {"type": "integer", "minimum": 200, "default": 403},
        "rejected_msg": {"type": "string"},
    },
    "anyOf": [
        {"required": ["blacklist"]},
        {"required": ["whitelist"]},
        {"required": ["allowed_by_methods"]},
    ],
}


def prepare(conf: dict[str, Any]) -> dict[str, Any]:
    kind = conf.get("type", "consumer_name")
    by_user: dict[str | None, frozenset[str]] = {}
    for entry in conf.get("allowed_by_methods") or ():
        user = entry.get("user")
        if user not in by_user:  # the first entry for a user decides, as in APISIX
            by_user[user] = frozenset(entry.get("methods") or ())
    msg = conf.get("rejected_msg")
    return {
        "type": kind,
        "blacklist": frozenset(conf.get("blacklist") or ()),
        "whitelist": frozenset(conf.get("whitelist") or ()),
        "by_user": by_user,
        "rejected_code": conf.get("rejected_code", 403),
        "rejected_body": {"message": msg if msg is not None else f"The {kind} is forbidden."},
        "missing_body": {"message": f"The request is rejected, please check the {kind} for this request"},
    }


def _value(kind: str, ctx: Any) -> Any:
    value = ctx.var(kind)
    if value is None and kind == "consumer_group_id":
        consumer = getattr(ctx, "consumer", None)
        if isinstance(consumer, dict):
            value = consumer.get("group_id")
        elif consumer is not None:
            value = getattr(consumer, "group_id", None)
    return value


def access(conf: dict[str, Any], ctx: Any) -> Any:
    value = _value(conf["type"], ctx)
    if value is None or value is False:
        return 401, conf["missing_body"]
    value = str(value)
    if value in conf["blacklist"]:
        return conf["rejected_code"], conf["rejected_body"]
    block = False
    whitelisted = False
    if conf["whitelist"]:
        whitelisted = value in conf["whitelist"]
        block = not whitelisted
    if conf["by_user"] and not whitelisted:
        allowed = conf["by_user"].get(value)
        if allowed is not None and ctx.method not in allowed:
            block = True
    if block:
        return conf["rejected_code"], conf["rejected_body"]
    return None
