"""The OpenAPI 3.1 document of the REST surface, served at `/openapi.json`.

Written by hand (the handlers are plain Starlette) and kept true by
tests/web/test_openapi.py, which validates real responses against it.
"""

from __future__ import annotations

from typing import Any

from core.events import KINDS as EVENT_KINDS
from core.identity import required_role
from core.schema import MAX_INSTANCES

_NUM_OR_NULL = {"type": ["number", "null"]}
_ISO = {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$"}
_STATE = {"type": "string", "enum": ["stopped", "starting", "running", "stopping", "error"]}
_METRIC_NAMES = ["total_concepts", "total_associations", "storage_size_mb",
                 "queries_per_second", "avg_latency_ms", "cpu_percent", "memory_percent"]

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["success", "error"],
        "properties": {"success": {"const": False}, "error": {"type": "string"}},
    },
    "Component": {
        "type": "object",
        "required": ["name", "state", "pid", "uptime", "cpu_percent", "memory_mb", "error",
                     "last_updated", "plugin", "restarts", "exit_code", "health",
                     "next_restart_in", "depends_on", "metrics", "containment", "limits"],
        "properties": {
            "name": {"type": "string"},
            "state": _STATE,
            "pid": {"type": ["integer", "null"]},
            "uptime": _NUM_OR_NULL,
            "cpu_percent": _NUM_OR_NULL,
            "memory_mb": _NUM_OR_NULL,
            "error": {"type": ["string", "null"]},
            "last_updated": _ISO,
            "plugin": {"type": "string"},
            "restarts": {"type": "integer", "minimum": 0},
            "exit_code": {"type": ["integer", "null"]},
            "health": {"enum": ["healthy", "unhealthy", "starting", None]},
            "next_restart_in": _NUM_OR_NULL,
            "depends_on": {"type": "array", "items": {"type": "string"}},
            "instance_of": {"type": "string", "description": "Only on an instance ID.K of "
                            "a component with `instances`: its ID."},
            "metrics": {"type": "object", "description": "The component's own figures "
                        "from its probe; names match [a-z_][a-z0-9_]*.",
                        "propertyNames": {"pattern": "^[a-z_][a-z0-9_]*$"},
                        "additionalProperties": {"type": "number"}},
            "containment": {"enum": ["cgroup", "process-group"],
                            "description": "What ends everything the component started: "
                            "its cgroup v2, or its process group and descendants."},
            "limits": {"type": "object", "description": "memory_max and cpu_max as in "
                       "effect, and who enforces each (kernel, supervisor or null); {} "
                       "without limits.",
                       "properties": {"memory_max_mb": {"type": "number"},
                                      "memory_max_by": {"enum": ["kernel", "supervisor"]},
                                      "cpu_max": {"type": "number"},
                                      "cpu_max_by": {"enum": ["kernel", None]}}},
        },
    },
    "ComponentWithId": {
        "allOf": [{"$ref": "#/components/schemas/Component"},
                  {"type": "object", "required": ["id"],
                   "properties": {"id": {"type": "string"}}}],
    },
    "Metrics": {
        "type": "object", "required": ["timestamp", *_METRIC_NAMES],
        "properties": {"timestamp": _ISO, **{m: _NUM_OR_NULL for m in _METRIC_NAMES}},
    },
    "Snapshot": {
        "type": "object", "required": ["components", "metrics"],
        "properties": {
            "components": {"type": "object",
                           "additionalProperties": {"$ref": "#/components/schemas/Component"}},
            "metrics": {"$ref": "#/components/schemas/Metrics"},
        },
    },
    "ComponentList": {
        "type": "object", "required": ["components"],
        "properties": {"components": {
            "type": "array", "items": {"$ref": "#/components/schemas/ComponentWithId"}}},
    },
    "ComponentGroup": {
        "type": "object", "description": "A component with `instances`, addressed by its "
        "ID: a summary, and each instance ID.K as in the snapshot.",
        "required": ["id", "name", "state", "plugin", "instances", "running", "depends_on",
                     "components"],
        "properties": {
            "id": {"type": "string"}, "name": {"type": "string"}, "state": _STATE,
            "plugin": {"type": "string"},
            "instances": {"type": "integer", "minimum": 0, "maximum": MAX_INSTANCES},
            "running": {"type": "integer", "minimum": 0},
            "depends_on": {"type": "array", "items": {"type": "string"}},
            "components": {"type": "object",
                           "additionalProperties": {"$ref": "#/components/schemas/Component"}},
        },
    },
    "ControlResult": {
        "type": "object", "required": ["success", "component"],
        "properties": {"success": {"const": True}, "component": {"anyOf": [
            {"$ref": "#/components/schemas/ComponentWithId"},
            {"$ref": "#/components/schemas/ComponentGroup"}]}},
    },
    "ScaleRequest": {
        "type": "object", "required": ["instances"], "additionalProperties": False,
        "properties": {"instances": {"type": "integer", "minimum": 0,
                                     "maximum": MAX_INSTANCES}},
    },
    "Logs": {
        "type": "object", "required": ["component", "lines", "last_seq"],
        "properties": {
            "component": {"type": "string"},
            "last_seq": {"type": "integer", "minimum": 0},
            "lines": {"type": "array", "items": {
                "type": "object", "required": ["seq", "time", "stream", "text"],
                "properties": {"seq": {"type": "integer"}, "time": _ISO,
                               "stream": {"enum": ["stdout", "stderr", "supervisor"]},
                               "text": {"type": "string"}}}},
        },
    },
    "History": {
        "type": "object", "required": ["interval", "points"],
        "properties": {
            "interval": {"type": "number"},
            "points": {"type": "array", "items": {
                "type": "object", "required": ["timestamp", "metrics", "components"],
                "properties": {
                    "timestamp": _ISO,
                    "metrics": {"$ref": "#/components/schemas/Metrics"},
                    "components": {"type": "object", "additionalProperties": {
                        "type": "object", "required": ["state", "cpu_percent", "memory_mb"],
                        "properties": {"state": _STATE, "cpu_percent": _NUM_OR_NULL,
                                       "memory_mb": _NUM_OR_NULL}}},
                }}},
        },
    },
    "ReloadResult": {
        "type": "object", "required": ["success", "added", "removed", "changed", "unchanged"],
        "properties": {"success": {"const": True},
                       **{k: {"type": "array", "items": {"type": "string"}}
                          for k in ("added", "removed", "changed", "unchanged")}},
    },
    "Info": {
        "type": "object", "required": ["version", "interval", "auth_required", "max_clients"],
        "properties": {"version": {"type": "string"}, "interval": {"type": "number"},
                       "auth_required": {"type": "boolean"},
                       "max_clients": {"type": "integer"}},
    },
    "Health": {"type": "object", "required": ["status"],
               "properties": {"status": {"const": "ok"}}},
}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{ref}"}}}}


_ERR = {
    "401": _json("Error", "Token missing, malformed, expired or wrongly signed"),
    "429": _json("Error", "Too many control requests from this client"),
}
_NOT_FOUND = {"404": _json("Error", "No component with this id")}
_CID = {"name": "cid", "in": "path", "required": True, "schema": {"type": "string"}}


_WAIT = {"name": "wait", "in": "query", "required": False,
         "description": "true: answer once the component is stopped (or in error), its "
                        "process gone; by default the answer comes as soon as it has left "
                        "running, usually in state stopping.",
         "schema": {"type": "string", "enum": ["true", "false", "1", "0"]}}


def _control(action: str) -> dict[str, Any]:
    return {"post": {
        "summary": f"{action.capitalize()} one component",
        "parameters": [_CID, _WAIT] if action == "stop" else [_CID],
        "responses": {"200": _json("ControlResult", "The component after the request"),
                      **({"400": _json("Error", "A bad query value (wait=maybe)")}
                         if action == "stop" else {}),
                      **_NOT_FOUND, **_ERR,
                      "403": _json("Error", "Cross-origin request refused"),
                      "503": _json("Error", "Refused: the supervisor is shutting down")},
    }}


def document(version: str) -> dict[str, Any]:
    """The OpenAPI document for this server version; each operation states its role."""
    doc = _document(version)
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            role = required_role(method.upper(), path.replace("{cid}", "x"))
            operation["x-required-role"] = role
            operation["description"] = (
                "Public: no token needed." if role is None else
                f"Needs the role {role} or above (viewer < operator < admin) when "
                "[auth] or [server] token is set.")
            if role is not None:
                operation["responses"].setdefault(
                    "403", _json("Error", "The token's role is too low, or the request "
                                          "came from another origin"))
    return doc


def _document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Control Center", "version": version,
                 "description": "Process supervisor REST API. With [server] token set, "
                                "send `Authorization: Bearer <token>`."},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
        "paths": {
            "/api/status": {"get": {"summary": "The latest snapshot (what /ws sends)",
                                    "responses": {"200": _json("Snapshot", "The snapshot"),
                                                  **_ERR}}},
            "/api/components": {"get": {"summary": "Every component, in config order",
                                        "responses": {"200": _json("ComponentList", "List"),
                                                      **_ERR}}},
            "/api/components/{cid}": {"get": {
                "summary": "One component", "parameters": [_CID],
                "responses": {"200": {"description": "The component (a component with "
                                                     "instances: ComponentGroup)",
                                      "content": {"application/json": {"schema": {"anyOf": [
                                          {"$ref": "#/components/schemas/ComponentWithId"},
                                          {"$ref": "#/components/schemas/ComponentGroup"}]}}}},
                              **_NOT_FOUND, **_ERR}}},
            "/api/components/{cid}/start": _control("start"),
            "/api/components/{cid}/stop": _control("stop"),
            "/api/components/{cid}/restart": _control("restart"),
            "/api/components/{cid}/scale": {"post": {
                "summary": "Run N instances of one component until the next reload: new "
                           "ones start, surplus ones stop from the highest index down",
                "parameters": [_CID],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ScaleRequest"}}}},
                "responses": {"200": _json("ControlResult", "The component after the scale"),
                              "400": _json("Error", "No integer instances from 0 to "
                                           f"{MAX_INSTANCES}, or the id of one instance "
                                           "(scale its component); nothing changed"),
                              **_NOT_FOUND, **_ERR,
                              "403": _json("Error", "Cross-origin request refused"),
                              "503": _json("Error", "Refused: the supervisor is shutting "
                                                    "down")}}},
            "/api/components/{cid}/logs": {"get": {
                "summary": "Recent output lines of one component",
                "parameters": [_CID,
                               {"name": "lines", "in": "query", "schema": {
                                   "type": "integer", "minimum": 0, "maximum": 5000,
                                   "default": 200}},
                               {"name": "after", "in": "query", "schema": {
                                   "type": "integer", "minimum": 0}}],
                "responses": {"200": _json("Logs", "Lines, oldest first"),
                              "400": _json("Error", "Bad query value"),
                              **_NOT_FOUND, **_ERR}}},
            "/api/history": {"get": {
                "summary": "Compact snapshot history for charts, oldest first",
                "parameters": [{"name": "seconds", "in": "query",
                                "schema": {"type": "number", "minimum": 0}}],
                "responses": {"200": _json("History", "Points"),
                              "400": _json("Error", "Bad query value"), **_ERR}}},
            "/api/reload": {"post": {
                "summary": "Re-read config.toml; restart only what changed",
                "responses": {"200": _json("ReloadResult", "What changed"),
                              "400": _json("Error", "The config error; nothing changed"),
                              "403": _json("Error", "Cross-origin request refused"),
                              **_ERR}}},
            "/api/info": {"get": {"summary": "Server facts (no token needed)",
                                  "security": [{}],
                                  "responses": {"200": _json("Info", "Facts")}}},
            "/api/events": {"get": {
                "summary": "The event log, newest last: state changes, restarts, give-ups, "
                           "health, probe errors, reloads, control actions",
                "parameters": [
                    {"name": "since", "in": "query", "schema": {"type": "number"},
                     "description": "epoch seconds (an ISO-8601 time ending in Z is also "
                                    "accepted)"},
                    {"name": "component", "in": "query", "schema": {"type": "string"}},
                    {"name": "kind", "in": "query",
                     "schema": {"type": "string", "enum": list(EVENT_KINDS)}},
                    {"name": "limit", "in": "query", "schema": {
                        "type": "integer", "minimum": 1, "maximum": 10000, "default": 100}}],
                "responses": {"200": {"description": "Events", "content": {
                    "application/json": {"schema": {
                        "type": "object", "required": ["events"], "properties": {
                            "events": {"type": "array", "items": {"type": "object"}}}}}}},
                    "400": _json("Error", "Bad query value"), **_ERR}}},
            "/api/keys": {"get": {
                "summary": "The public key of signed snapshots, as a JWKS (RFC 7517); "
                           "no keys without [server] signing_key",
                "security": [{}],
                "responses": {"200": {"description": "JWKS", "content": {"application/json": {
                    "schema": {"type": "object", "required": ["keys"], "properties": {
                        "keys": {"type": "array", "items": {"type": "object"}}}}}}}}}},
            "/healthz": {"get": {"summary": "Liveness", "security": [{}],
                                 "responses": {"200": _json("Health", "Alive")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "Prometheus text",
                                                       "content": {"text/plain": {}}},
                                               **_ERR}}},
        },
    }
