"""The collector's HTTP API described: an OpenAPI 3.1 document, served at
``GET /v1/openapi.json`` and kept in sync with the routes by the tests (every JSON route
of `collector.app` is here with its methods, and nothing else is; schemathesis runs the
document against a live collector: no 5xx, no response outside it).

The document is data built by a few helpers below; the HTML pages (``/``,
``/bundles/...``, ``/login``) are for people and are not part of it.
"""

from __future__ import annotations

from typing import Any

from agent import __version__
from agent.upload.protocol import COMMAND_KINDS
from collector.incidents.inputs import MAX_ASSIGNEE, MAX_CONTACT, MAX_NOTE
from collector.incidents.model import STATUS_FILTERS, Channel, Status

Schema = dict[str, Any]

BUNDLE_ID = {
    "type": "string",
    "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
}

REPLY: Schema = {
    "type": "object",
    "required": ["status", "error"],
    "properties": {
        "status": {"type": "string"},
        "bundle_id": {"type": ["string", "null"]},
        "error": {"type": ["string", "null"]},
    },
}

RECORD: Schema = {
    "type": "object",
    "required": ["bundle_id", "device", "site", "fault_key", "severity", "created_at", "links"],
    "properties": {
        "bundle_id": {"type": "string"},
        "device": {"type": "string"},
        "site": {"type": "string"},
        "fault_key": {"type": "string"},
        "severity": {"type": "string"},
        "trigger_kind": {"type": "string"},
        "summary": {"type": "string"},
        "created_at": {"type": ["string", "null"], "format": "date-time"},
        "received_at": {"type": ["string", "null"], "format": "date-time"},
        "size_bytes": {"type": "integer"},
        "sha256": {"type": "string"},
        "screenshot": {"type": "string"},
        "signature_checked": {"type": "boolean"},
        "links": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}

HOLD_TARGET: Schema = {
    "type": "object",
    "properties": {
        "bundle": {"type": "string"},
        "device": {"type": "string"},
        "site": {"type": "string"},
        "reason": {"type": "string", "maxLength": 500},
    },
}


# The two-way channel (issue 16, docs/CHANNEL.md).
NULLABLE_TEXT = {"type": ["string", "null"]}
ENROLL: Schema = {
    "type": "object",
    "required": ["enrollment_token", "device_id", "ed25519_public_key"],
    "properties": {
        "enrollment_token": {"type": "string", "maxLength": 200},
        "device_id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"},
        "ed25519_public_key": {"type": "string", "maxLength": 4096},
        "agent_version": {"type": "string", "maxLength": 64},
        "boot_id": {"type": "string", "maxLength": 64},
    },
}
ENROLLED: Schema = {
    "type": "object",
    "required": [
        "status",
        "device_id",
        "device_token",
        "site",
        "tenant",
        "encrypt_to",
        "collector_public_key",
        "checkin_interval_s",
    ],
    "properties": {
        "status": {"const": "enrolled"},
        "device_id": {"type": "string"},
        "device_token": {"type": "string"},
        "site": {"type": "string"},
        "tenant": {"type": "string"},
        "encrypt_to": {"type": "array", "items": {"type": "string"}},
        "collector_public_key": {"type": "string"},
        "checkin_interval_s": {"type": "integer"},
    },
}
CHECKIN: Schema = {
    "type": "object",
    "properties": {
        "base": {
            "type": "string",
            "maxLength": 64,
            "description": "The state token of the previous reply: the fields left out "
            "keep their stored values, summary's fields replace the stored ones",
        },
        "device_id": {"type": "string"},
        "sent_at": {"type": "string"},
        "boot_id": {"type": "string", "maxLength": 64},
        "agent_version": {"type": "string", "maxLength": 64},
        "config_digest": {"type": "string", "maxLength": 80},
        "interval_s": {"type": "integer", "minimum": 30, "maximum": 86400},
        "summary": {"type": "object"},
        "results": {
            "type": "array",
            "maxItems": 100,
            "items": {
                "type": "object",
                "required": ["command_id", "status"],
                "properties": {
                    "command_id": {"type": "string", "maxLength": 64},
                    "status": {"enum": ["done", "refused", "failed"]},
                    "detail": {"type": "string"},
                    "at": {"type": "string"},
                    "key": {
                        "type": "object",
                        "description": "rotate-signing-key: the new key, vouched for by the old",
                        "required": ["public_key", "previous", "signature"],
                        "properties": {
                            "public_key": {"type": "string", "maxLength": 4096},
                            "previous": {"type": "string", "maxLength": 16},
                            "signature": {"type": "string", "maxLength": 200},
                        },
                    },
                },
            },
        },
    },
}
SIGNED_COMMAND: Schema = {
    "type": "object",
    "required": ["envelope", "signature"],
    "properties": {"envelope": {"type": "string"}, "signature": {"type": "string"}},
}
CHECKIN_REPLY: Schema = {
    "type": "object",
    "required": ["status", "commands", "next_checkin_s"],
    "properties": {
        "status": {"const": "ok"},
        "commands": {"type": "array", "items": SIGNED_COMMAND},
        "config": {
            "type": "object",
            "required": ["digest", "values"],
            "properties": {"digest": {"type": "string"}, "values": {"type": "object"}},
        },
        "next_checkin_s": {"type": "integer"},
        "key_rotations": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["command_id", "status", "detail"],
                "properties": {
                    "command_id": {"type": "string"},
                    "status": {"enum": ["done", "refused", "failed"]},
                    "detail": {"type": "string"},
                },
            },
        },
        "state": {"type": "string", "description": "The next check-in's base"},
    },
}
COMMAND: Schema = {
    "type": "object",
    "required": ["command_id", "device_id", "kind", "args", "status", "expires_at"],
    "properties": {
        "command_id": {"type": "string"},
        "device_id": {"type": "string"},
        "kind": {"type": "string"},
        "args": {"type": "object"},
        "issued_at": {"type": "string", "format": "date-time"},
        "expires_at": {"type": "string", "format": "date-time"},
        "issued_by": {"type": "string"},
        "status": {"enum": ["queued", "delivered", "done", "refused", "failed", "expired"]},
        "deliveries": {"type": "integer"},
        "delivered_at": {"type": ["string", "null"]},
        "result_at": {"type": ["string", "null"]},
        "detail": {"type": "string"},
    },
}
COMMAND_REQUEST: Schema = {
    "type": "object",
    "required": ["kind"],
    "properties": {
        "kind": {"enum": list(COMMAND_KINDS)},
        "args": {"type": "object"},
        "expires_in_s": {"type": "integer", "minimum": 30, "maximum": 86400},
    },
}
DEVICE: Schema = {
    "type": "object",
    "required": ["device_id", "site", "tenant", "state", "enrolled_at", "last_seen"],
    "properties": {
        "device_id": {"type": "string"},
        "site": {"type": "string"},
        "tenant": {"type": "string"},
        "state": {"enum": ["never", "ok", "late", "silent"]},
        "enrolled_at": {"type": "string", "format": "date-time"},
        "enrollments": {"type": "integer"},
        "last_seen": NULLABLE_TEXT,
        "interval_s": {"type": "integer"},
        "silent_since": NULLABLE_TEXT,
        "agent_version": {"type": "string"},
        "boot_id": {"type": "string"},
        "config_digest": {"type": "string"},
        "summary": {"type": ["object", "null"]},
        "key_ids": {"type": "array", "items": {"type": "string"}},
        "keys": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key_id", "from", "until"],
                "properties": {
                    "key_id": {"type": "string"},
                    "from": NULLABLE_TEXT,
                    "until": NULLABLE_TEXT,
                },
            },
        },
    },
}
DEVICE_DETAIL: Schema = {
    **DEVICE,
    "required": [*DEVICE["required"], "commands", "outages"],
    "properties": {
        **DEVICE["properties"],
        "commands": {"type": "array", "items": COMMAND},
        "outages": {"type": "array", "items": {"type": "object"}},
    },
}
DEVICE_ID = {"type": "string", "minLength": 1}
DEVICE_HEADER = {
    "name": "X-Posagent-Device",
    "in": "header",
    "required": True,
    "schema": {"type": "string"},
}


def json_body(schema: Schema) -> Schema:
    return {"content": {"application/json": {"schema": schema}}}


def reply(
    description: str, schema: Schema = REPLY, headers: dict[str, str] | None = None
) -> Schema:
    out: Schema = {"description": description, **json_body(schema)}
    if headers:
        out["headers"] = {
            h: {"schema": {"type": "string"}, "description": d} for h, d in headers.items()
        }
    return out


def query(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def path(name: str, schema: Schema) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema}


# The answers every operator route may give besides its own.
READ_ERRORS: dict[str, Schema] = {
    "400": reply("A malformed parameter (the reason in `error`)"),
    "401": reply(
        "No credentials, or credentials not accepted", headers={"WWW-Authenticate": "Bearer"}
    ),
    "503": reply("Storage unavailable: retry later", headers={"Retry-After": "seconds"}),
}
BUNDLE_READ = {
    **READ_ERRORS,
    "404": reply("No such bundle, or one out of the caller's reach"),
    "422": reply("A sealed bundle this collector cannot decrypt"),
}

LIST_FILTERS = [
    query("device", "Device id"),
    query("site", "Registered site"),
    query("fault", "Fault key, e.g. printer.paper_end"),
    query(
        "severity",
        "warning | error | critical",
        {"type": "string", "enum": ["", "warning", "error", "critical"]},
    ),
    query("since", "Created at or after (RFC 3339 or epoch seconds)"),
    query("until", "Created at or before (RFC 3339 or epoch seconds)"),
    query("limit", "Page size (1-500, default 50)", {"type": "string", "pattern": "^[0-9]*$"}),
    query("offset", "Rows to skip", {"type": "string", "pattern": "^[0-9]*$"}),
]


INCIDENT: Schema = {
    "type": "object",
    "required": ["id", "device", "site", "fault_key", "severity", "status", "links"],
    "properties": {
        "id": {"type": "integer"},
        "device": {"type": "string"},
        "site": {"type": "string"},
        "fault_key": {"type": "string"},
        "source": {"type": "string"},
        "severity": {"type": "string"},
        "summary": {"type": "string"},
        "status": {"type": "string", "enum": [s.value for s in Status]},
        "assignee": {"type": "string"},
        "active": {"type": "boolean"},
        "raised_at": {"type": ["string", "null"]},
        "cleared_at": {"type": ["string", "null"]},
        "last_at": {"type": ["string", "null"]},
        "duration_s": {"type": "number"},
        "repeats": {"type": "integer"},
        "bundles": {"type": "integer"},
        "opened_at": {"type": ["string", "null"]},
        "escalated_at": {"type": ["string", "null"]},
        "resolved_at": {"type": ["string", "null"]},
        "updated_at": {"type": ["string", "null"]},
        "links": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
EVENT: Schema = {
    "type": "object",
    "required": ["id", "kind"],
    "properties": {"id": {"type": "integer"}, "kind": {"type": "string"}},
}
INCIDENT_ID = {"type": "string", "pattern": "^[1-9][0-9]{0,14}$"}
INCIDENT_READ = {**READ_ERRORS, "404": reply("No such incident, or one out of reach")}
INCIDENT_WRITE = {
    **INCIDENT_READ,
    "403": reply("A merchant may only read"),
    "409": reply("Not a change this incident can make"),
    "413": reply("Body too large"),
}


def _entry(name: str, media: str) -> Schema:
    return {
        "get": {
            "summary": f"The bundle's {name}",
            "parameters": [path("bundle_id", BUNDLE_ID)],
            "responses": {
                "200": {"description": name, "content": {media: {"schema": {}}}},
                **BUNDLE_READ,
            },
        }
    }


def _channel_paths() -> dict[str, Schema]:
    """The two-way channel's routes (docs/CHANNEL.md; `collector.channel.api`)."""
    terminal = {
        "401": reply("Unknown device token", headers={"WWW-Authenticate": "Bearer"}),
        "403": reply("The token is another device's"),
        "503": reply("Unavailable: retry later", headers={"Retry-After": "seconds"}),
    }
    dev = [path("device_id", DEVICE_ID)]
    device_404 = reply("No such device, or one out of the caller's reach")
    return {
        "/v1/enroll": {
            "post": {
                "summary": "Enroll a terminal with an enrollment token (no credentials)",
                "security": [],
                "requestBody": {"required": True, **json_body(ENROLL)},
                "responses": {
                    "201": reply("Enrolled: the device token, given once", ENROLLED),
                    "400": reply("Malformed body"),
                    "401": reply("Unknown or revoked enrollment token (bad_token)"),
                    "409": reply("The device is enrolled at another site (device_elsewhere)"),
                    "410": reply("Enrollment token expired or used up"),
                    "413": reply("Body over 64 KiB"),
                    "429": reply("Too many enrollments", headers={"Retry-After": "seconds"}),
                    "503": reply("No command key yet", headers={"Retry-After": "seconds"}),
                },
            }
        },
        "/v1/checkins": {
            "post": {
                "summary": "A terminal's check-in: state in, commands and config out",
                "parameters": [
                    DEVICE_HEADER,
                    query(
                        "wait",
                        "Long-poll: hold the answer up to this many seconds (0-55)",
                        {"type": "string", "pattern": "^[0-9]{0,2}$"},
                    ),
                ],
                "requestBody": {"required": True, **json_body(CHECKIN)},
                "responses": {
                    "200": reply("Commands to run and remote config", CHECKIN_REPLY),
                    "400": reply("Malformed body or wait"),
                    "409": reply("resend: the base is not the state the collector holds"),
                    "413": reply("Body over 64 KiB"),
                    "429": reply("Rate limited", headers={"Retry-After": "seconds"}),
                    **terminal,
                },
            }
        },
        "/v1/devices/self/token": {
            "post": {
                "summary": "A new device token for the caller (rotate-token)",
                "parameters": [DEVICE_HEADER],
                "responses": {
                    "200": reply(
                        "The new token; the old one works until the new one is first used",
                        {
                            "type": "object",
                            "required": ["status", "device_id", "device_token"],
                            "properties": {
                                "status": {"const": "ok"},
                                "device_id": {"type": "string"},
                                "device_token": {"type": "string"},
                            },
                        },
                    ),
                    "409": reply("Not enrolled: its token is in the tokens file"),
                    **terminal,
                },
            }
        },
        "/v1/devices": {
            "get": {
                "summary": "Devices within the caller's reach, by id",
                "parameters": [
                    query("site", "Site"),
                    query("limit", "Page size (1-500)", {"type": "string", "pattern": "^[0-9]*$"}),
                    query("offset", "Rows to skip", {"type": "string", "pattern": "^[0-9]*$"}),
                ],
                "responses": {
                    "200": reply(
                        "A page of devices",
                        {
                            "type": "object",
                            "required": ["devices", "total", "limit", "offset"],
                            "properties": {
                                "devices": {"type": "array", "items": DEVICE},
                                "total": {"type": "integer"},
                                "limit": {"type": "integer"},
                                "offset": {"type": "integer"},
                            },
                        },
                    ),
                    **READ_ERRORS,
                },
            }
        },
        "/v1/devices/{device_id}": {
            "get": {
                "summary": "A device: state, last summary, recent commands and silences",
                "parameters": dev,
                "responses": {
                    "200": reply("The device", DEVICE_DETAIL),
                    "404": device_404,
                    **READ_ERRORS,
                },
            }
        },
        "/v1/devices/{device_id}/keys": {
            "get": {
                "summary": "The device's public signing keys as one PEM file (bundle verify)",
                "parameters": dev,
                "responses": {
                    "200": {
                        "description": "PEM public keys, each after its # key lines",
                        "content": {"application/x-pem-file": {"schema": {"type": "string"}}},
                    },
                    "404": device_404,
                    "409": reply("A key file on the collector does not parse"),
                    **READ_ERRORS,
                },
            }
        },
        "/v1/devices/{device_id}/commands": {
            "get": {
                "summary": "The device's commands, newest first",
                "parameters": dev,
                "responses": {
                    "200": reply(
                        "Commands",
                        {
                            "type": "object",
                            "required": ["commands"],
                            "properties": {"commands": {"type": "array", "items": COMMAND}},
                        },
                    ),
                    "404": device_404,
                    **READ_ERRORS,
                },
            },
            "post": {
                "summary": "Queue a signed command for the device (support and admin)",
                "parameters": dev,
                "requestBody": {"required": True, **json_body(COMMAND_REQUEST)},
                "responses": {
                    "201": reply(
                        "Queued",
                        {
                            "type": "object",
                            "required": ["status", "command"],
                            "properties": {"status": {"const": "queued"}, "command": COMMAND},
                        },
                    ),
                    "403": reply("Merchants do not queue commands"),
                    "404": device_404,
                    "413": reply("Body too large"),
                    **READ_ERRORS,
                    "503": reply(
                        "No command key, or storage unavailable", headers={"Retry-After": "seconds"}
                    ),
                },
            },
        },
    }


def document() -> Schema:
    """The OpenAPI document of this collector."""
    bid = [path("bundle_id", BUNDLE_ID)]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "posagent collector",
            "version": __version__,
            "description": (
                "Upload protocol v1 for terminals (PUT a bundle) and the read API for "
                "operators. Operator routes take `Authorization: Bearer <token>`."
            ),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "Liveness and storage reachability",
                    "security": [],
                    "responses": {
                        "200": reply("Healthy", {"type": "object"}),
                        "503": reply("Storage unreachable", {"type": "object"}),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text exposition (behind the read side's credentials)",
                    "responses": {
                        "200": {
                            "description": "metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": READ_ERRORS["401"],
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": reply("The OpenAPI document", {"type": "object"})},
                }
            },
            "/v1/bundles": {
                "get": {
                    "summary": "Bundles, newest first, filtered and paged",
                    "parameters": LIST_FILTERS,
                    "responses": {
                        "200": reply(
                            "A page of bundles",
                            {
                                "type": "object",
                                "required": [
                                    "bundles",
                                    "total",
                                    "limit",
                                    "offset",
                                    "counts_by_fault",
                                ],
                                "properties": {
                                    "bundles": {"type": "array", "items": RECORD},
                                    "total": {"type": "integer"},
                                    "limit": {"type": "integer"},
                                    "offset": {"type": "integer"},
                                    "counts_by_fault": {
                                        "type": "object",
                                        "additionalProperties": {"type": "integer"},
                                    },
                                },
                            },
                        ),
                        **READ_ERRORS,
                    },
                }
            },
            "/v1/bundles/{bundle_id}": {
                "get": {
                    "summary": "The bundle's manifest",
                    "parameters": bid,
                    "responses": {"200": reply("The manifest", {"type": "object"}), **BUNDLE_READ},
                },
                "put": {
                    "summary": "Upload a bundle (upload protocol v1; device token)",
                    "parameters": [
                        *bid,
                        {
                            "name": "X-Posagent-Device",
                            "in": "header",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "Content-Digest",
                            "in": "header",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/zip": {"schema": {"type": "string", "format": "binary"}}
                        },
                    },
                    "responses": {
                        "201": reply("Stored"),
                        "200": reply("Already stored with the same digest"),
                        "400": reply("Malformed request"),
                        "401": reply("Unknown device token"),
                        "403": reply("The token is another device's"),
                        "408": reply("The body did not arrive in time"),
                        "409": reply("Already stored with another digest"),
                        "413": reply("Body over max_body_mib"),
                        "415": reply("Not application/zip"),
                        "422": reply("The bundle does not verify (the reason in `error`)"),
                        "429": reply("Rate limited", headers={"Retry-After": "seconds"}),
                        "503": reply("Storage unavailable", headers={"Retry-After": "seconds"}),
                    },
                },
            },
            "/v1/bundles/{bundle_id}/download": {
                "get": {
                    "summary": "The stored bundle as uploaded (sealed bundles stay sealed)",
                    "parameters": bid,
                    "responses": {
                        "200": {
                            "description": "zip",
                            "content": {"application/zip": {"schema": {}}},
                        },
                        **BUNDLE_READ,
                    },
                }
            },
            "/v1/bundles/{bundle_id}/screenshot.png": _entry("screenshot.png", "image/png"),
            "/v1/bundles/{bundle_id}/report.txt": _entry("report.txt", "text/plain"),
            "/v1/bundles/{bundle_id}/timeline.json": _entry("timeline.json", "application/json"),
            "/v1/bundles/{bundle_id}/diagnostics": {
                "get": {
                    "summary": "The bundle's diagnostics entries by name",
                    "parameters": bid,
                    "responses": {"200": reply("Diagnostics", {"type": "object"}), **BUNDLE_READ},
                }
            },
            "/v1/bundles/{bundle_id}/entries/{name}": {
                "get": {
                    "summary": "One entry of the bundle by name",
                    "parameters": [*bid, path("name", {"type": "string", "minLength": 1})],
                    "responses": {
                        "200": {"description": "the entry", "content": {"*/*": {"schema": {}}}},
                        **BUNDLE_READ,
                    },
                }
            },
            "/v1/incidents": {
                "get": {
                    "summary": "Incidents, newest first, filtered and paged",
                    "parameters": [
                        *LIST_FILTERS,
                        query(
                            "status",
                            "open | acknowledged | resolved | unresolved",
                            {"type": "string", "enum": ["", *STATUS_FILTERS]},
                        ),
                        query(
                            "assignee", "Who took it", {"type": "string", "maxLength": MAX_ASSIGNEE}
                        ),
                    ],
                    "responses": {
                        "200": reply(
                            "A page of incidents",
                            {
                                "type": "object",
                                "required": ["incidents", "total", "limit", "offset"],
                                "properties": {
                                    "incidents": {"type": "array", "items": INCIDENT},
                                    "total": {"type": "integer"},
                                    "limit": {"type": "integer"},
                                    "offset": {"type": "integer"},
                                },
                            },
                        ),
                        **READ_ERRORS,
                    },
                }
            },
            "/v1/incidents/{incident_id}": {
                "get": {
                    "summary": "One incident with its bundles, notes and history",
                    "parameters": [path("incident_id", INCIDENT_ID)],
                    "responses": {
                        "200": reply(
                            "The incident",
                            {
                                **INCIDENT,
                                "properties": {
                                    **INCIDENT["properties"],
                                    "bundle_list": {"type": "array"},
                                    "notes": {"type": "array", "items": EVENT},
                                    "events": {"type": "array", "items": EVENT},
                                },
                            },
                        ),
                        **INCIDENT_READ,
                    },
                }
            },
            "/v1/incidents/{incident_id}/notes": {
                "post": {
                    "summary": "Record a contact with the merchant (support and admin)",
                    "parameters": [path("incident_id", INCIDENT_ID)],
                    "requestBody": {
                        "required": True,
                        **json_body(
                            {
                                "type": "object",
                                "required": ["channel", "text"],
                                "additionalProperties": False,
                                "properties": {
                                    "channel": {
                                        "type": "string",
                                        "enum": [c.value for c in Channel],
                                    },
                                    "text": {
                                        "type": "string",
                                        "minLength": 1,
                                        "maxLength": MAX_NOTE,
                                    },
                                    "contact": {"type": "string", "maxLength": MAX_CONTACT},
                                    "at": {"type": ["string", "number"]},
                                },
                            }
                        ),
                    },
                    "responses": {"201": reply("The note", EVENT), **INCIDENT_WRITE},
                }
            },
            "/v1/incidents/{incident_id}/status": {
                "post": {
                    "summary": "Acknowledge, resolve, reopen or assign (support and admin)",
                    "parameters": [path("incident_id", INCIDENT_ID)],
                    "requestBody": {
                        "required": True,
                        **json_body(
                            {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "status": {"type": "string", "enum": [s.value for s in Status]},
                                    "assignee": {"type": "string", "maxLength": MAX_ASSIGNEE},
                                },
                            }
                        ),
                    },
                    "responses": {"200": reply("The incident after", INCIDENT), **INCIDENT_WRITE},
                }
            },
            "/v1/incidents/{incident_id}/export": {
                "get": {
                    "summary": "The dispute export: one zip with the incident's page and bundles",
                    "parameters": [path("incident_id", INCIDENT_ID)],
                    "responses": {
                        "200": {
                            "description": "zip",
                            "content": {"application/zip": {"schema": {}}},
                        },
                        **INCIDENT_READ,
                    },
                }
            },
            "/v1/fleet/faults": {
                "get": {
                    "summary": "Per fault key over the last days: incidents, terminals and sites",
                    "parameters": [
                        query(
                            "days", "1-366 (default 7)", {"type": "string", "pattern": "^[0-9]*$"}
                        )
                    ],
                    "responses": {"200": reply("Fault keys", {"type": "object"}), **READ_ERRORS},
                }
            },
            "/v1/webhooks/deliveries": {
                "get": {
                    "summary": "The delivery log of one webhook or email recipient (admins)",
                    "parameters": [
                        query("hook", "A webhook's name"),
                        query("email", "An email recipient"),
                        query("status", "pending | delivered | failed"),
                        query("limit", "Rows (1-500)"),
                    ],
                    "responses": {
                        "200": reply("Deliveries and their attempts", {"type": "object"}),
                        "403": reply("Not an admin"),
                        **READ_ERRORS,
                    },
                }
            },
            "/v1/audit": {
                "get": {
                    "summary": "The audit log as JSON lines, oldest first (admins)",
                    "parameters": [
                        query("since", "At or after (RFC 3339 or epoch seconds)"),
                        query("until", "At or before (RFC 3339 or epoch seconds)"),
                        query(
                            "limit",
                            "Entries (default and most 10,000)",
                            {"type": "string", "pattern": "^[0-9]*$"},
                        ),
                        query("actor", "Who"),
                        query("action", "What, e.g. bundle.download"),
                    ],
                    "responses": {
                        "200": {
                            "description": "One JSON object a line: at, actor, action, target, address, detail",
                            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                        },
                        "403": reply("Not an admin"),
                        **READ_ERRORS,
                    },
                }
            },
            "/v1/users": {
                "get": {
                    "summary": "Every account with its role and tenants (admins)",
                    "responses": {
                        "200": reply(
                            "Users",
                            {
                                "type": "object",
                                "required": ["users"],
                                "properties": {
                                    "users": {"type": "array", "items": {"type": "object"}}
                                },
                            },
                        ),
                        "403": reply("Not an admin"),
                        **READ_ERRORS,
                    },
                }
            },
            **_channel_paths(),
            "/v1/holds": {
                "get": {
                    "summary": "Legal holds, oldest first",
                    "responses": {"200": reply("Holds", {"type": "object"}), **READ_ERRORS},
                },
                "post": {
                    "summary": "Place a legal hold on a bundle, a device or a site",
                    "requestBody": {"required": True, **json_body(HOLD_TARGET)},
                    "responses": {
                        "201": reply("Placed", {"type": "object"}),
                        "200": reply("Already in place (reason replaced)", {"type": "object"}),
                        "413": reply("Body too large", {"type": "object"}),
                        **READ_ERRORS,
                    },
                },
                "delete": {
                    "summary": "Release a legal hold",
                    "parameters": [
                        query("bundle", "Bundle id"),
                        query("device", "Device id"),
                        query("site", "Site"),
                    ],
                    "responses": {
                        "200": reply("Released", {"type": "object"}),
                        "404": reply("No such hold", {"type": "object"}),
                        **READ_ERRORS,
                    },
                },
            },
        },
    }
