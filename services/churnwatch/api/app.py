"""
The at-risk API and the web page for CS teams (`churnwatch api`), on aiohttp.

Routes (described in /openapi.json):

| route                                   | what                                              |
| --------------------------------------- | ------------------------------------------------- |
| GET /api/v1/at-risk                     | riskiest customers, by segment, paged             |
| GET /api/v1/customers/{customer_id}     | one customer: history, features, reasons, alerts  |
| GET /api/v1/alerts/{alert_id}           | one alert as published, with its verdict          |
| GET /api/v1/overview?weeks=             | the whole base: risk, outcomes, alerts, KPIs      |
| POST /api/v1/alerts/{alert_id}/feedback | a CSM's verdict on an alert (the only write)      |
| GET /healthz, /metrics, /openapi.json   | health (503 when Redis is down), Prometheus, spec |
| GET /, /overview, /static/...           | the web page: the list and the overview           |

Errors are JSON, `{"error": "...", "parameter": "..."}`, with a 4xx naming the parameter.

Every /api/ route asks for a bearer token (`Authorization: Bearer <token>`): the read token
(CHURNWATCH_API_READ_TOKEN) for a GET, the write token (CHURNWATCH_API_WRITE_TOKEN) for a GET or
a verdict; 401 without a valid one, 403 for a verdict with the read token. /healthz, /metrics
(probes and Prometheus), /openapi.json and the page's own files hold no customer data and need
none; the page asks for a token when the API answers 401. `CHURNWATCH_API_AUTH=off` serves
without tokens, on a loopback host only. Tokens are compared in constant time, never logged.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from churnwatch.api.openapi import openapi_spec
from churnwatch.api.overview import DEFAULT_WEEKS
from churnwatch.api.settings import ApiSettings
from churnwatch.api.views import BadParameterError, NotFoundError, Views, parse_list_query
from churnwatch.core.errors import StoreUnavailableError
from churnwatch.metrics import Metrics
from churnwatch.store import RedisStore

log = logging.getLogger(__name__)

STATIC: Final = Path(str(resources.files("churnwatch.api") / "static"))
VIEWS_KEY: Final = web.AppKey("views", Views)
SETTINGS_KEY: Final = web.AppKey("settings", ApiSettings)
REGISTRY_KEY: Final = web.AppKey("registry", CollectorRegistry)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(
    status: int, parameter: str | None, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    response = _json({"error": message, "parameter": parameter}, status=status)
    if headers:
        response.headers.update(headers)
    return response


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The bearer token of every /api/ route (see the module's docstring)."""
    settings = request.app[SETTINGS_KEY]
    if settings.auth == "off" or not request.path.startswith("/api/"):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    unauthorized = {"WWW-Authenticate": 'Bearer realm="churnwatch"'}
    if scheme.lower() != "bearer" or not given.strip():
        msg = "authorization: a bearer token is required (Authorization: Bearer <token>)"
        return _error(401, "authorization", msg, headers=unauthorized)
    offered = given.strip().encode()
    may = None
    for level, token in (("write", settings.write_token), ("read", settings.read_token)):
        # compare_digest against every configured token: the time says nothing of which
        if token is not None and hmac.compare_digest(offered, token.get_secret_value().encode()):
            may = may or level
    if may is None:
        return _error(
            401, "authorization", "authorization: the token is not valid", headers=unauthorized
        )
    if request.method not in ("GET", "HEAD") and may != "write":
        msg = "authorization: this token may read, not give verdicts (the write token may)"
        return _error(403, "authorization", msg)
    return await handler(request)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Our exceptions as JSON 4xx/503, and every request counted by route and status."""
    views = request.app[VIEWS_KEY]
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    try:
        response = await handler(request)
    except BadParameterError as exc:
        response = _error(400, exc.parameter, exc.message)
    except NotFoundError as exc:
        response = _error(404, exc.parameter, exc.message)
    except StoreUnavailableError as exc:
        log.warning("api.store_unavailable", extra={"route": name, "detail": str(exc)})
        response = _error(503, None, "the store (Redis) is unavailable")
    except web.HTTPException as exc:
        if exc.status >= 400 and request.path.startswith("/api/"):
            response = _error(exc.status, None, exc.reason)
        else:
            raise
    if views.metrics is not None:
        views.metrics.api_requests.labels(name, str(response.status)).inc()
    return response


async def at_risk(request: web.Request) -> web.Response:
    views, settings = request.app[VIEWS_KEY], request.app[SETTINGS_KEY]
    query = parse_list_query(
        request.query,
        segments=views.segments,
        default_limit=settings.default_limit,
        max_limit=settings.max_limit,
    )
    return _json(await views.at_risk(query))


async def customer(request: web.Request) -> web.Response:
    return _json(await request.app[VIEWS_KEY].customer(request.match_info["customer_id"]))


async def alert(request: web.Request) -> web.Response:
    views = request.app[VIEWS_KEY]
    record = await views.alert(request.match_info["alert_id"])
    data = orjson.loads(orjson.dumps(record.model_dump(mode="json")))
    verdicts = await views.store.verdicts([record.alert_id])
    data["verdict"] = verdicts.get(record.alert_id)
    return _json(data)


async def feedback(request: web.Request) -> web.Response:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        msg = f"body: expected a JSON object, got invalid JSON ({exc})"
        raise BadParameterError(parameter="body", message=msg) from None
    if not isinstance(body, dict):
        msg = f"body: expected a JSON object, got {type(body).__name__}"
        raise BadParameterError(parameter="body", message=msg)
    for name in body:
        if name not in ("verdict", "by", "note"):
            msg = f"{name}: unknown field (expected verdict, by, note)"
            raise BadParameterError(parameter=name, message=msg)
    if "verdict" not in body:
        raise BadParameterError(parameter="verdict", message="verdict: required (one of the four)")
    texts = {}
    for name in ("by", "note"):
        value = body.get(name, "")
        if not isinstance(value, str):
            msg = f"{name}: expected a string, got {type(value).__name__}"
            raise BadParameterError(parameter=name, message=msg)
        texts[name] = value
    result = await request.app[VIEWS_KEY].give_verdict(
        request.match_info["alert_id"], body["verdict"], by=texts["by"], note=texts["note"]
    )
    return _json(result)


async def overview(request: web.Request) -> web.Response:
    for name in request.query:
        if name != "weeks":
            msg = f"{name}: unknown parameter (expected weeks)"
            raise BadParameterError(parameter=name, message=msg)
    raw = request.query.get("weeks") or str(DEFAULT_WEEKS)
    try:
        weeks = int(raw)
    except ValueError:
        msg = f"weeks: expected an integer, got {raw!r}"
        raise BadParameterError(parameter="weeks", message=msg) from None
    return _json(await request.app[VIEWS_KEY].overview(weeks))


async def healthz(request: web.Request) -> web.Response:
    try:
        await request.app[VIEWS_KEY].store.ping()
    except StoreUnavailableError:
        return _json({"status": "unavailable", "redis": "down"}, status=503)
    return _json({"status": "ok", "redis": "up"})


async def metrics(request: web.Request) -> web.Response:
    try:
        await request.app[VIEWS_KEY].refresh_metrics()
    except StoreUnavailableError as exc:
        log.warning("api.metrics_store_unavailable", extra={"detail": str(exc)})
    body = generate_latest(request.app[REGISTRY_KEY])
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def openapi(request: web.Request) -> web.Response:
    return _json(openapi_spec(request.app[VIEWS_KEY].segments))


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def overview_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "overview.html")


def create_app(views: Views, settings: ApiSettings, registry: CollectorRegistry) -> web.Application:
    """The aiohttp application over `views` (whose store the caller starts and closes)."""
    app = web.Application(middlewares=[_errors, _auth], client_max_size=64 * 1024)
    app[VIEWS_KEY] = views
    app[SETTINGS_KEY] = settings
    app[REGISTRY_KEY] = registry
    app.router.add_get("/api/v1/at-risk", at_risk)
    app.router.add_get("/api/v1/customers/{customer_id}", customer)
    app.router.add_get("/api/v1/alerts/{alert_id}", alert)
    app.router.add_post("/api/v1/alerts/{alert_id}/feedback", feedback)
    app.router.add_get("/api/v1/overview", overview)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/", index)
    app.router.add_get("/overview", overview_page)
    if STATIC.is_dir():
        app.router.add_static("/static/", STATIC)
    return app


class ApiServer:
    """The API on a port: `await start()`, `url`, `await stop()` (tests run it in-process)."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.store = RedisStore(settings.redis)
        self.views = Views(
            self.store,
            settings.to_policy(),
            partitions=settings.topic_partitions,
            metrics=self.metrics,
            history_points=settings.history_points,
            overview_cache_seconds=settings.overview_cache_seconds,
        )
        self._runner: web.AppRunner | None = None
        self.port = settings.port

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    async def start(self) -> None:
        """
        Raises:
            ConfigError: the settings would serve /api/ unguarded (`ApiSettings.check_auth`).
        """
        self.settings.check_auth()
        await self.store.start()
        app = create_app(self.views, self.settings, self.registry)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        server = site._server  # the bound socket tells the port when 0 was asked
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info("api.started", extra={"url": self.url})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.store.close()


async def serve_forever(settings: ApiSettings, on_ready: Callable[[], None] | None = None) -> None:
    """
    Run the API until cancelled (SIGINT/SIGTERM end `asyncio.run`); `on_ready` is called once
    it serves (Redis reached, the port bound).
    """
    server = ApiServer(settings)
    await server.start()
    if on_ready is not None:
        on_ready()
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
