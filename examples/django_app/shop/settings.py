"""Settings of the example shop. The database comes from ``SHOP_DATABASE_URL`` (default: a
SQLite file beside this folder): ``sqlite:///...``, ``postgresql+psycopg://...`` (the
``postgres`` extra's driver) or ``mysql+pymysql://...`` (the ``mysql`` extra's)."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url

HERE = Path(__file__).resolve().parent.parent
url = make_url(os.environ.get("SHOP_DATABASE_URL", f"sqlite:///{HERE / 'shop.db'}"))
backend = url.get_backend_name()
if backend == "mysql":
    try:
        import MySQLdb  # noqa: F401  (mysqlclient, Django's own choice)
    except ImportError:  # PyMySQL stands in for it
        import pymysql

        pymysql.version_info = (2, 2, 1, "final", 0)
        pymysql.install_as_MySQLdb()

ENGINES = {"sqlite": "sqlite3", "postgresql": "postgresql", "mysql": "mysql"}
DATABASES = {
    "default": {
        "ENGINE": f"django.db.backends.{ENGINES[backend]}",
        "NAME": url.database,
        "USER": url.username or "",
        "PASSWORD": url.password or "",
        "HOST": url.host or "",
        "PORT": str(url.port or ""),
    }
}
SECRET_KEY = os.environ.get("SHOP_SECRET_KEY", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "cms_outbox.django",
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "shop.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# The daemon (`manage.py cms_outbox_run`) delivers; web processes only enqueue.
CMS_OUTBOX = {"flush": "off"}
