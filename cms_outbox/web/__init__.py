"""The outbox dashboard: a WSGI application (``pip install 'cms-outbox[ui]'``).

Mount ``Dashboard(database_url=...)`` inside your own application behind its login,
or serve it with ``cms-outbox ui``.
"""

from __future__ import annotations

from .app import Dashboard

__all__ = ["Dashboard"]
