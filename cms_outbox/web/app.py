"""``Dashboard``: the WSGI application, from access control to the rendered page.

One object, no globals: build it from a database URL or an engine, mount it (it
honours ``SCRIPT_NAME``), or let ``cms-outbox ui`` serve it. Werkzeug parses the
requests, Jinja2 (autoescaping everything) renders the pages.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib import resources
from typing import Any, Callable
from urllib.parse import urlsplit

from jinja2 import Environment, PackageLoader, StrictUndefined
from sqlalchemy import Engine
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from .. import database, migrate
from ..__version__ import __version__
from ..errors import EventNotFound, StorageError, ValidationError
from ..store import Store
from . import actions, pages, security
from .overview import Activity
from .render import register_filters

__all__ = ["Dashboard"]

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
_ASSETS = {"dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript"}
_URLS = Map(
    [
        Rule("/", endpoint="overview", methods=["GET"]),
        Rule("/events", endpoint="events", methods=["GET"]),
        Rule("/events/<event_id>", endpoint="event", methods=["GET"]),
        Rule("/events/<event_id>/retry", endpoint="retry_one", methods=["POST"]),
        Rule("/retry", endpoint="confirm_retry", methods=["GET"]),
        Rule("/retry", endpoint="retry_selected", methods=["POST"]),
        Rule("/purge", endpoint="confirm_purge", methods=["GET"]),
        Rule("/purge", endpoint="purge", methods=["POST"]),
        Rule("/static/<name>", endpoint="asset", methods=["GET"]),
    ],
    strict_slashes=False,
)
_ACTIONS = {"retry_one", "retry_selected", "purge"}
_CONFIRMATIONS = {"confirm_retry", "confirm_purge"}  # the forms that lead to an action


class Dashboard:
    """The outbox dashboard as a WSGI application.

    Who may use it: with ``password``, anyone giving it (HTTP Basic; any user name);
    else whoever ``authorize(environ)`` accepts (the embedding application's own
    login); else only requests from this machine, by peer address and ``Host`` header.

    :param database_url: the outbox database; an engine made from it is disposed of by
        ``close()``.
    :param engine: an engine of the caller's, used as is and never disposed of.
    :param read_only: refuse every request but GET and HEAD, and hide the actions.
    :raises SchemaError: the outbox tables are missing or not at this version's schema.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        engine: Engine | None = None,
        read_only: bool = False,
        password: str | None = None,
        authorize: security.Authorize | None = None,
    ) -> None:
        if (database_url is None) == (engine is None):
            raise ValueError("Dashboard needs exactly one of database_url= or engine=")
        self._owns_engine = engine is None
        # A reader: a typo in the URL must not leave an empty SQLite file behind.
        self.engine = (
            engine if engine is not None else database.create(str(database_url), create=False)
        )
        migrate.ensure_schema(self.engine, auto_migrate=False)
        self.read_only = read_only
        self._password = password or None
        self._authorize = authorize
        self._store = Store(self.engine)
        self._templates = Environment(
            loader=PackageLoader("cms_outbox.web", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        register_filters(self._templates)
        folder = resources.files("cms_outbox.web") / "static"
        self._assets = {name: (folder / name).read_bytes() for name in _ASSETS}
        # The overview's charts: the last hour per minute, the last day per 15 minutes.
        self.activity = (
            Activity(self.engine, span=3600.0, bucket=60.0),
            Activity(self.engine, span=86400.0, bucket=900.0),
        )
        for activity in self.activity:
            activity.read()  # count the settled past once now, not on the first page

    def close(self) -> None:
        """Release the database (an engine passed in stays open: it is the caller's)."""
        self._store.close()
        if self._owns_engine:
            self.engine.dispose()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        response = self._respond(Request(environ))
        return response(environ, start_response)

    # -- one request -----------------------------------------------------------------

    def _respond(self, request: Request) -> Response:
        refused = security.check_access(
            request.environ, password=self._password, authorize=self._authorize
        )
        if refused == "credential":
            challenge = self._page(request, "error.html", 401, title="Sign in",
                                   message="This dashboard needs its password.")  # fmt: skip
            challenge.headers["WWW-Authenticate"] = 'Basic realm="cms-outbox", charset="UTF-8"'
            return challenge
        if refused == "loopback":
            return self._error(
                request, 403, "This dashboard answers only on this machine (127.0.0.1): "
                "set a dashboard password to serve it elsewhere."
            )  # fmt: skip
        if request.method not in ("GET", "HEAD") and self.read_only:
            return self._error(request, 403, "This dashboard is read-only.")
        adapter = _URLS.bind_to_environ(request.environ)
        try:
            endpoint, values = adapter.match()
        except HTTPException as exc:
            return self._error(request, exc.code or 400, exc.description or "Not found.")
        if endpoint == "asset":
            return self._asset(values["name"])
        if endpoint in _CONFIRMATIONS and self.read_only:
            return self._error(request, 403, "This dashboard is read-only.")
        if endpoint in _ACTIONS and not self._csrf_ok(request):
            log.warning("dashboard: refused %s %s without a valid CSRF token", request.method,
                        request.path)  # fmt: skip
            return self._error(
                request,
                403,
                "The form was stale or forged (CSRF token "
                "missing or wrong): reload the page and retry.",
            )
        context = Context(self, request, adapter.build)
        try:
            handler = getattr(actions if endpoint in _ACTIONS else pages, endpoint)
            response: Response = handler(context, **values)
        except ValidationError as exc:
            return self._error(request, 400, str(exc))
        except EventNotFound as exc:
            return self._error(request, 404, str(exc.args[0]))
        except StorageError as exc:
            log.warning("dashboard: %s", exc, exc_info=exc.__cause__ is not None)
            return self._error(request, 503, str(exc))  # plain words; the driver's is chained
        if endpoint in _ACTIONS or endpoint in _CONFIRMATIONS:
            response.headers["Cache-Control"] = "no-store"
        return response

    def _csrf_ok(self, request: Request) -> bool:
        origin = request.headers.get("Origin")
        # The host only: behind a TLS-terminating proxy the scheme seen here is http.
        if origin is not None and urlsplit(origin).netloc != request.host:
            return False
        return security.csrf_valid(
            request.cookies.get(security.CSRF_COOKIE), request.form.get(security.CSRF_FIELD)
        )

    def _asset(self, name: str) -> Response:
        if name not in self._assets:
            return Response(NotFound.description, 404, mimetype="text/plain")
        response = Response(self._assets[name], mimetype=_ASSETS[name].split(";")[0])
        response.headers.extend(security.security_headers(no_store=False))
        response.headers["Cache-Control"] = "public, max-age=300"
        return response

    def _error(self, request: Request, status: int, message: str) -> Response:
        return self._page(request, "error.html", status, title="Error", message=message)

    def _page(self, request: Request, template: str, status: int, **values: Any) -> Response:
        return Context(self, request, _URLS.bind_to_environ(request.environ).build).render(
            template, http_status=status, **values
        )


class Context:
    """What a page or action handler works with: the dashboard, the request, URLs."""

    def __init__(self, dashboard: Dashboard, request: Request, build: Callable[..., str]) -> None:
        self.dashboard = dashboard
        self.request = request
        self.engine = dashboard.engine
        self.store = dashboard._store
        self.read_only = dashboard.read_only
        self._build = build
        self.csrf_token = request.cookies.get(security.CSRF_COOKIE) or ""
        self._new_token = not self.csrf_token
        if self._new_token:
            self.csrf_token = security.new_csrf_token()

    def url(self, endpoint: str, **values: Any) -> str:
        query = values.pop("query", "")
        path = self._build(endpoint, values)
        return f"{path}?{query}" if query else str(path)

    @property
    def client(self) -> str:
        return str(self.request.remote_addr or "unknown")

    def render(self, template: str, *, http_status: int = 200, **values: Any) -> Response:
        html = self.dashboard._templates.get_template(template).render(
            url=self.url,
            read_only=self.read_only,
            csrf_field=security.CSRF_FIELD,
            csrf_token=self.csrf_token,
            version=__version__,
            **values,
        )
        response = Response(html, http_status, mimetype="text/html")
        response.headers.extend(security.security_headers(no_store=self.request.method != "GET"))
        if self._new_token:
            response.set_cookie(
                security.CSRF_COOKIE,
                self.csrf_token,
                path=self.request.script_root or "/",
                httponly=True,
                samesite="Strict",
                secure=self.request.scheme == "https",
            )
        return response
