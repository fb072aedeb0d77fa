"""The outbox dashboard: a WSGI application (``pip install 'cms-outbox[ui]'``).

Mount ``Dashboard(database_url=...)`` inside your own application behind its login,
or serve it with ``cms-outbox ui``.
"""

from __future__ import annotations

try:
    from .app import Dashboard
except ModuleNotFoundError as exc:  # Jinja2 or Werkzeug: the ui extra is not installed
    if exc.name not in ("jinja2", "werkzeug", "markupsafe"):
        raise
    raise ModuleNotFoundError(
        f"cms_outbox.web needs the ui extra ({exc.name} is missing): pip install 'cms-outbox[ui]'",
        name=exc.name,
    ) from exc

__all__ = ["Dashboard"]
