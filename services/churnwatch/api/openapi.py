"""The OpenAPI 3.1 description of the at-risk API (served at /openapi.json)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from churnwatch.api.overview import DEFAULT_WEEKS, MAX_WEEKS
from churnwatch.core.alerts import AlertRecord
from churnwatch.core.feedback import VERDICTS

_ERROR = {
    "type": "object",
    "required": ["error", "parameter"],
    "properties": {
        "error": {"type": "string", "description": "What was wrong, in words."},
        "parameter": {"type": ["string", "null"], "description": "The parameter at fault."},
    },
}
_REASON = {
    "type": "object",
    "properties": {
        "factor": {"type": "string"},
        "contribution": {"type": "number"},
        "text": {"type": "string"},
    },
}
_HEADLINE = {
    "customer_id": {"type": "string"},
    "segment": {"type": "string"},
    "churn_probability": {"type": ["number", "null"]},
    "engagement_score": {"type": ["number", "null"]},
    "change": {
        "type": ["number", "null"],
        "description": "Churn probability now minus at the anchor (one to two weeks earlier).",
    },
    "scored_at": {"type": ["string", "null"], "format": "date-time"},
}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(code): {
            "description": "Error naming the parameter at fault",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code in codes
    }


def _ok(schema: str) -> dict[str, Any]:
    return {
        "200": {
            "description": "OK",
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
    }


def openapi_spec(segments: Sequence[str]) -> dict[str, Any]:
    """The spec, with the segments of the rules file the API runs with."""
    alert_schema = AlertRecord.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = alert_schema.pop("$defs", {})
    spec = _spec(segments, alert_schema, defs)
    # Every /api/ route asks for a bearer token (CHURNWATCH_API_AUTH=off: none, loopback only).
    spec["components"]["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "CHURNWATCH_API_READ_TOKEN reads; CHURNWATCH_API_WRITE_TOKEN reads "
            "and gives verdicts (403 for a verdict with the read token).",
        }
    }
    for path, item in spec["paths"].items():
        if path.startswith("/api/"):
            for operation in item.values():
                operation["security"] = [{"bearer": []}]
                operation["responses"] |= _errors(401)
                if "post" in item and operation is item["post"]:
                    operation["responses"] |= _errors(403)
    return spec


def _spec(
    segments: Sequence[str], alert_schema: dict[str, Any], defs: dict[str, Any]
) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "churnwatch at-risk API",
            "version": "1",
            "description": "Customers at risk of churning, why, and CSM feedback on alerts.",
        },
        "paths": {
            "/api/v1/at-risk": {
                "get": {
                    "summary": "The customers who need action (or everyone), highest first",
                    "parameters": [
                        {
                            "name": "sort",
                            "in": "query",
                            "schema": {"enum": ["score", "change"], "default": "score"},
                        },
                        {"name": "segment", "in": "query", "schema": {"enum": list(segments)}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "default": 50},
                        },
                        {
                            "name": "offset",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "default": 0},
                        },
                        {
                            "name": "show",
                            "in": "query",
                            "description": "action: engagement score below the segment's "
                            "threshold, or an alert without a verdict; all: everyone",
                            "schema": {"enum": ["action", "all"], "default": "action"},
                        },
                    ],
                    "responses": {**_ok("AtRiskPage"), **_errors(400, 503)},
                }
            },
            "/api/v1/customers/{customer_id}": {
                "get": {
                    "summary": "One customer: score history, features, reasons and alerts",
                    "parameters": [
                        {
                            "name": "customer_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {**_ok("Customer"), **_errors(404, 503)},
                }
            },
            "/api/v1/alerts/{alert_id}": {
                "get": {
                    "summary": "One alert as published, with its verdict",
                    "parameters": [
                        {
                            "name": "alert_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {**_ok("AlertRecord"), **_errors(404, 503)},
                }
            },
            "/api/v1/alerts/{alert_id}/feedback": {
                "post": {
                    "summary": "A CSM's verdict on an alert (one per alert; the same again: no-op)",
                    "parameters": [
                        {
                            "name": "alert_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/VerdictIn"}
                            }
                        },
                    },
                    "responses": {**_ok("VerdictOut"), **_errors(400, 404, 503)},
                }
            },
            "/api/v1/overview": {
                "get": {
                    "summary": "The whole base: risk by segment, at risk by week, churned and "
                    "saved with their revenue, alerts by week and rule with their verdicts, "
                    "satisfaction and ticket resolution, as of the newest scoring",
                    "parameters": [
                        {
                            "name": "weeks",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_WEEKS,
                                "default": DEFAULT_WEEKS,
                            },
                        }
                    ],
                    "responses": {**_ok("Overview"), **_errors(400, 503)},
                }
            },
            "/healthz": {"get": {"summary": "Health", "responses": {"200": {"description": "OK"}}}},
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "OK"}},
                }
            },
        },
        "components": {
            "schemas": {
                **defs,
                "Error": _ERROR,
                "Reason": _REASON,
                "AlertRecord": alert_schema,
                "AtRiskItem": {
                    "type": "object",
                    "properties": {
                        **_HEADLINE,
                        "top_reasons": {"type": "array", "items": _REASON},
                        "open_alerts": {
                            "type": "array",
                            "items": {"type": "object"},
                            "description": "The alerts without a verdict among the customer's "
                            "20 newest, newest first (older ones: GET /api/v1/customers/{id}).",
                        },
                    },
                },
                "AtRiskPage": {
                    "type": "object",
                    "properties": {
                        "items": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/AtRiskItem"},
                        },
                        "limit": {"type": "integer"},
                        "offset": {"type": "integer"},
                        "next_offset": {"type": ["integer", "null"]},
                        "total": {"type": "integer"},
                        "others": {
                            "type": "integer",
                            "description": "Customers still at risk but not listed "
                            "(show=action: those who need no action)",
                        },
                        "show": {"enum": ["action", "all"]},
                        "definition": {
                            "type": "string",
                            "description": "Which customers the list holds, in words",
                        },
                        "sort": {"type": "string"},
                        "segment": {"type": ["string", "null"]},
                        "segments": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "Customer": {
                    "type": "object",
                    "properties": {
                        **_HEADLINE,
                        "summary": {"type": "string"},
                        "reasons": {"type": "array", "items": _REASON},
                        "features": {"type": "object", "additionalProperties": {"type": "number"}},
                        "history": {"type": "array", "items": {"type": "object"}},
                        "alerts": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "Overview": {
                    "type": "object",
                    "description": "Every figure and its definition: see `definitions`; "
                    "`as_of` is null while nothing has been scored.",
                    "properties": {
                        "as_of": {"type": ["string", "null"]},
                        "weeks": {"type": "integer"},
                        "customers": {"type": "integer"},
                        "at_risk": {"type": "integer"},
                        "risk_bins": {"type": "array", "items": {"type": "number"}},
                        "segments": {"type": "array", "items": {"type": "object"}},
                        "need_action": {"type": "object"},
                        "churned": {"type": "object"},
                        "saved": {"type": "object"},
                        "weekly": {"type": "array", "items": {"type": "object"}},
                        "rules": {"type": "array", "items": {"type": "string"}},
                        "satisfaction": {"type": "object"},
                        "tickets": {"type": "object"},
                        "revenue_unit": {"type": "string"},
                        "definitions": {"type": "object"},
                    },
                },
                "VerdictIn": {
                    "type": "object",
                    "required": ["verdict"],
                    "additionalProperties": False,
                    "properties": {
                        "verdict": {"enum": list(VERDICTS)},
                        "by": {"type": "string", "maxLength": 200},
                        "note": {"type": "string", "maxLength": 2000},
                    },
                },
                "VerdictOut": {
                    "type": "object",
                    "properties": {
                        "alert_id": {"type": "string"},
                        "verdict": {"enum": list(VERDICTS)},
                        "previous": {"type": ["string", "null"]},
                        "changed": {"type": "boolean"},
                    },
                },
            }
        },
    }
