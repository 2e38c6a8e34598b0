"""The OpenAPI 3.1 description of every endpoint, served at ``/openapi.json`` and fuzzed by
schemathesis in the tests: when an endpoint changes, its description here changes with it."""

from __future__ import annotations

from typing import Any

from leadscore.events import MAX_CONTACT_CHARS
from leadscore.service.config import ServiceConfig
from leadscore.service.ingest import MAX_ERRORS_LISTED
from leadscore.service.read import EXPLAIN_MAX


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_ID = {
    "type": ["string", "integer"],
    "minLength": 1,
    "maxLength": MAX_CONTACT_CHARS,
    "description": "string, or an integer (stringified)",
}
_TIME = {"type": "string", "format": "date-time"}
_OBJECT = {"type": ["object", "null"], "additionalProperties": True}
_EVENT_NAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": 128,
    "pattern": "[A-Za-z0-9]",
    "description": "mapped to an action (configurable); unmapped names become their "
    "lower-case dotted slug",
}


def _segment_message(extra: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "userId": _ID,
            "anonymousId": _ID,
            "messageId": {**_ID, "description": "becomes the event id: retries are deduplicated"},
            "timestamp": _TIME,
            "sentAt": {**_TIME, "description": "client clock at send time, for skew correction"},
            "context": _OBJECT,
            "integrations": _OBJECT,
            "writeKey": {"type": "string", "description": "alternative to Basic auth"},
            **extra,
        },
        "anyOf": [{"required": ["userId"]}, {"required": ["anonymousId"]}],
    }
    if required:
        schema["required"] = required
    return schema


def openapi_document(config: ServiceConfig) -> dict[str, Any]:
    """The OpenAPI 3.1 description of every endpoint (fuzzed by schemathesis in the tests)."""
    segment_errors = {
        "400": _error("Invalid JSON, a message that cannot be mapped, or over the size limit"),
        "401": _error("Missing or wrong write key; nothing was written"),
        "408": _error("The body did not arrive within the time limit; nothing was written"),
        "415": _error("Unsupported Content-Encoding (only gzip)"),
        "503": _error("Redis unavailable; retry (Retry-After)"),
    }
    segment_ok = _json(_ref("SegmentResult"), "Stored in Redis")
    segment_security = [{"writeKeyBasic": []}, {"writeKeyBearer": []}, {}]

    def segment_op(summary: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "description": "Segment HTTP Tracking API compatible. The write key is the "
                "Basic auth user name (empty password) or `writeKey` in the body. Bodies may "
                "be gzip-encoded. 32 KB per call.",
                "security": segment_security,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": schema}},
                },
                "responses": {"200": segment_ok, **segment_errors},
            }
        }

    string_param = {"type": "string"}
    pixel_params: list[dict[str, Any]] = [
        {"name": name, "in": "query", "required": False, "schema": string_param, "description": d}
        for name, d in (
            ("contact", "contact id; else the visitor cookie"),
            ("mtc_id", "Mautic contact id (alias of contact)"),
            ("ct", "Mautic click-through id (alias of contact)"),
            ("action", "event action, default page.hit; other actions only if configured"),
            ("sig", "HMAC-SHA256 hex of the contact id, required when a pixel secret is set"),
            ("id", "event id, for deduplication"),
            ("url", "page URL; default: the Referer header"),
            ("title", "page title"),
            ("referrer", "the page's referrer"),
            ("page_url", "Mautic alias of url"),
            ("page_title", "Mautic alias of title"),
            ("page_referrer", "Mautic alias of referrer"),
        )
    ]
    pixel_params.append(
        {
            "name": "props",
            "in": "query",
            "required": False,
            "style": "form",
            "explode": True,
            "schema": {"type": "object", "additionalProperties": {"type": "string"}},
            "description": "any other parameter becomes an event prop",
        }
    )
    pixel_params.append(
        {
            "name": config.cookie_name,
            "in": "cookie",
            "required": False,
            "schema": string_param,
            "description": "first-party visitor id, set by this endpoint when absent",
        }
    )
    event_schema = {
        "type": "object",
        "required": ["contact", "action"],
        "properties": {
            "contact": {"type": "string", "minLength": 1, "maxLength": MAX_CONTACT_CHARS},
            "action": {"type": "string", "minLength": 1},
            "ts": {
                "type": ["string", "number"],
                "description": "RFC 3339, or epoch seconds / milliseconds; default now",
            },
            "id": {"type": ["string", "integer"]},
            "props": _OBJECT,
            "traits": {"type": ["object", "null"]},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "leadscore",
            "version": "1",
            "description": "Real-time lead scoring: event intake (pixel, Segment-compatible, "
            "native) into Redis streams, and the scores the flow computes.",
        },
        "paths": {
            "/t.gif": {
                "get": {
                    "summary": "Tracking pixel",
                    "description": "Always answers a 1x1 GIF. Bad input is counted and "
                    "dead-lettered, never shown to the visitor: so are actions other than "
                    "page.hit (and those configured) and, with a pixel secret, unsigned "
                    "contact ids.",
                    "parameters": pixel_params,
                    "responses": {
                        "200": {
                            "description": "A transparent 1x1 GIF, never cached",
                            "headers": {
                                "Cache-Control": {"schema": string_param},
                                "Set-Cookie": {"schema": string_param},
                            },
                            "content": {
                                "image/gif": {"schema": {"type": "string", "format": "binary"}}
                            },
                        }
                    },
                }
            },
            "/v1/track": segment_op(
                "Segment track",
                _segment_message({"event": _EVENT_NAME, "properties": _OBJECT}, ["event"]),
            ),
            "/v1/identify": segment_op(
                "Segment identify (with userId and anonymousId: the anonymous history is merged "
                "into the user)",
                _segment_message({"traits": _OBJECT}),
            ),
            "/v1/alias": segment_op(
                "Segment alias: previousId's history is merged into userId",
                {
                    **_segment_message({"previousId": _ID, "traits": _OBJECT}),
                    "required": ["userId", "previousId"],
                },
            ),
            "/v1/page": segment_op(
                "Segment page",
                _segment_message(
                    {
                        "name": {"type": "string"},
                        "category": {"type": "string"},
                        "properties": _OBJECT,
                    }
                ),
            ),
            "/v1/batch": segment_op(
                "Segment batch (500 KB per call, 32 KB per message)",
                {
                    "type": "object",
                    "required": ["batch"],
                    "properties": {
                        "batch": {"type": "array", "items": _ref("SegmentBatchMessage")},
                        "sentAt": _TIME,
                        "writeKey": {"type": "string"},
                        "context": _OBJECT,
                    },
                },
            ),
            "/v1/events": {
                "post": {
                    "summary": "Native events",
                    "description": "A JSON array of events, one JSON event, or JSON lines "
                    "(one event per line), whatever the content type. Each event is accepted "
                    "or rejected on its own; rejected ones are also dead-lettered.",
                    "security": [{"writeKeyBasic": []}, {"writeKeyBearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"type": "array", "items": _ref("Event")}
                            },
                            "application/x-ndjson": {
                                "schema": {
                                    "type": "string",
                                    "description": "one JSON event (see Event) per line",
                                }
                            },
                        },
                    },
                    "responses": {
                        "200": _json(_ref("EventsResult"), "Per-event outcome"),
                        "400": _error("Body empty, not JSON, or not valid gzip"),
                        "401": _error("Missing or wrong write key; nothing was written"),
                        "408": _error("The body did not arrive within the time limit"),
                        "413": _error("Body over the configured limit"),
                        "415": _error("Unsupported Content-Encoding (only gzip)"),
                        "503": _error("Redis unavailable; retry (Retry-After)"),
                    },
                }
            },
            "/v1/contacts/{id}": {
                "get": {
                    "summary": "A contact's scores (the read model)",
                    "security": [{"readKeyBasic": []}, {"readKeyBearer": []}, {}],
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 256},
                        },
                        {
                            "name": "explain",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "boolean"},
                            "description": "also return the newest change records (points, stage, "
                            "segment, tag), oldest first, and, when the service has the rules "
                            "and they `predict`, the likelihood's top factors "
                            "(`likelihood_factors`)",
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": EXPLAIN_MAX,
                                "default": 20,
                            },
                            "description": "how many change records explain returns",
                        },
                    ],
                    "responses": {
                        "200": _json(_ref("Contact"), "The read model"),
                        "400": _error("Bad id, explain or limit"),
                        "401": _error("Read keys are configured and none was given"),
                        "404": _error("No such contact (yet)"),
                        "503": _error("Redis unavailable"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness: the process answers",
                    "responses": {"200": _json(_ref("Status"), "Alive")},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: Redis reachable and partitions agreed",
                    "responses": {
                        "200": _json(_ref("Status"), "Ready"),
                        "503": _json(_ref("Status"), "Redis unavailable"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "writeKeyBasic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "write key as user name, empty password",
                },
                "writeKeyBearer": {"type": "http", "scheme": "bearer"},
                "readKeyBasic": {"type": "http", "scheme": "basic"},
                "readKeyBearer": {"type": "http", "scheme": "bearer"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["code", "message", "field"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "field": {
                            "type": ["string", "null"],
                            "description": "the field, parameter or header at fault",
                        },
                    },
                },
                "SegmentResult": {
                    "type": "object",
                    "required": ["success", "accepted", "rejected", "errors"],
                    "properties": {
                        "success": {"type": "boolean"},
                        "accepted": {"type": "integer", "minimum": 0},
                        "rejected": {"type": "integer", "minimum": 0},
                        "errors": {
                            "type": "array",
                            "maxItems": MAX_ERRORS_LISTED,
                            "items": {
                                "type": "object",
                                "required": ["index", "code", "field", "message"],
                                "properties": {
                                    "index": {"type": "integer", "minimum": 0},
                                    "code": {"type": "string"},
                                    "field": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                            },
                        },
                    },
                },
                "SegmentBatchMessage": {
                    **_segment_message(
                        {
                            "type": {
                                "type": "string",
                                "enum": ["track", "identify", "page", "screen", "alias"],
                            },
                            "previousId": _ID,
                            "event": _EVENT_NAME,
                            "name": {"type": "string"},
                            "category": {"type": "string"},
                            "properties": _OBJECT,
                            "traits": _OBJECT,
                        },
                        ["type"],
                    ),
                    "description": "A message as in the single calls, plus its `type`; one "
                    "that cannot be mapped is dead-lettered and listed in `errors`.",
                },
                "Event": event_schema,
                "EventsResult": {
                    "type": "object",
                    "required": ["accepted", "rejected", "reasons", "errors"],
                    "properties": {
                        "accepted": {"type": "integer", "minimum": 0},
                        "rejected": {"type": "integer", "minimum": 0},
                        "reasons": {
                            "type": "object",
                            "additionalProperties": {"type": "integer", "minimum": 1},
                        },
                        "errors": {
                            "type": "array",
                            "maxItems": MAX_ERRORS_LISTED,
                            "items": {
                                "type": "object",
                                "required": ["index", "code", "message"],
                                "properties": {
                                    "index": {"type": "integer", "minimum": 0},
                                    "code": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                            },
                        },
                    },
                },
                "Contact": {
                    "type": "object",
                    "description": "The flow's read model (engine view); `changes` only with "
                    "explain. With `predict` in the rules, a top-level `likelihood` (0-100).",
                    "properties": {
                        "score": {"type": "number"},
                        "scores": {"type": "object", "additionalProperties": {"type": "number"}},
                        "total": {"type": "number"},
                        "normalized": {"type": "number"},
                        "grade": {"type": ["string", "null"]},
                        "stage": {"type": ["string", "null"]},
                        "segments": {"type": "array", "items": {"type": "string"}},
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "updated_at": {"type": ["string", "null"]},
                        "changes": {"type": "array", "items": {"type": "object"}},
                        "requested": {
                            "type": "string",
                            "description": "the id asked for, when it was merged into `contact`",
                        },
                        "merged_into": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "the contacts the id asked for was merged into, "
                            "in order (the last is `contact`)",
                        },
                    },
                    "additionalProperties": True,
                },
                "Status": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok", "ready", "unavailable"]},
                        "partitions": {"type": "integer", "minimum": 1},
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    }
