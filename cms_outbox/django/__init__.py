"""Django integration: the outbox in Django's own database and transactions.

Add ``"cms_outbox.django"`` to ``INSTALLED_APPS``; ``manage.py migrate`` then creates the
outbox tables (the Alembic revisions, run by a Django migration) and
``manage.py cms_outbox_run`` runs the delivery daemon. In a view::

    from django.db import connection, transaction
    from cms_outbox.django import get_client

    with transaction.atomic():
        user = User.objects.create_user(username)
        get_client().track_lead("signup", str(user.pk), click_id, connection=connection)

The event is inserted through Django's own cursor, in the current transaction: it
exists if and only if the block commits, and no second connection is opened.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy.engine import URL

from ..client import CMSClient
from ..errors import ConfigurationError

__all__ = ["database_url", "get_client"]

_clients: dict[str, CMSClient] = {}
_lock = threading.Lock()

_DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}


def database_url(using: str = "default") -> str:
    """The SQLAlchemy URL of Django's database ``using`` (``settings.DATABASES``)."""
    from django.db import connections

    connection = connections[using]
    settings = connection.settings_dict
    driver = _DRIVERS.get(connection.vendor)
    if driver is None:
        raise ConfigurationError(
            f"DATABASES[{using!r}]: cms_outbox supports Django's sqlite3, postgresql and "
            f"mysql backends, not {settings['ENGINE']!r}"
        )
    if driver == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    url = URL.create(
        driver,
        username=settings.get("USER") or None,
        password=settings.get("PASSWORD") or None,
        host=settings.get("HOST") or None,
        port=int(settings["PORT"]) if settings.get("PORT") else None,
        database=settings["NAME"],
    )
    return url.render_as_string(hide_password=False)


def get_client(using: str = "default") -> CMSClient:
    """This process's client on Django's database ``using``, built on first use.

    Options come from ``settings.CMS_OUTBOX`` (``CMSClient``'s keyword arguments, e.g.
    ``{"flush": "off"}`` when a ``manage.py cms_outbox_run`` daemon delivers).
    """
    with _lock:
        client = _clients.get(using)
        if client is None:
            from django.conf import settings

            options: dict[str, Any] = dict(getattr(settings, "CMS_OUTBOX", {}))
            options.setdefault("database_url", database_url(using))
            client = _clients[using] = CMSClient(**options)
        return client
