"""What the auth plugins share (not a plugin: no NAME): the realm and anonymous-consumer schema
parts, the multi-auth flag, and APISIX's anonymous_consumer fallback."""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["REALM_PATTERN", "realm_schema", "ANONYMOUS_CONSUMER_SCHEMA", "UNDER_MULTI_AUTH", "found", "anonymous",
           "anonymous_fallback"]

# APISIX schema_def.get_realm_schema: printable ASCII except '"' and '\'
REALM_PATTERN = "^[\\x20-\\x21\\x23-\\x5B\\]-\\x7E]+$"


def realm_schema(default: str) -> dict[str, Any]:
    return {"type": "string", "pattern": REALM_PATTERN, "default": default, "minLength": 1, "maxLength": 128}


ANONYMOUS_CONSUMER_SCHEMA: dict[str, Any] = {"type": "string", "minLength": 1}

UNDER_MULTI_AUTH = "_under_multi_auth"   # set by multi-auth on its sub-plugins' confs (detailed errors)


def found(res: Any) -> tuple[Any, Any] | None:
    """Normalise what ``ctx.find_consumer`` answers into ``(consumer, conf)`` or None."""
    if res is None:
        return None
    consumer, cconf = res
    if consumer is None:
        return None
    return consumer, cconf


def anonymous(ctx: Any, name: str) -> Any:
    lookup = getattr(ctx, "consumer_by_name", None)
    return lookup(name) if lookup is not None else None


def anonymous_fallback(ctx: Any, conf: dict[str, Any], err: str, multi: bool,
                       log_error: Callable[[str], None]) -> tuple[Any, ...]:
    """After a failed authentication: APISIX's ``anonymous_consumer`` as ``(consumer, {})`` to
    attach, else the 401 answer ``(status, body, headers)`` with the realm's challenge."""
    www = {"WWW-Authenticate": conf["_www_authenticate"]}
    anon_name = conf.get("anonymous_consumer")
    if not anon_name:
        return 401, {"message": err}, www
    consumer = anonymous(ctx, anon_name)
    if consumer is None:
        detail = f"failed to get anonymous consumer {anon_name}"
        if multi:
            return 401, detail, www
        log_error(detail)
        return 401, {"message": "Invalid user authorization"}, www
    return consumer, {}
