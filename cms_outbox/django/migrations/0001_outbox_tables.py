"""Create (or bring to head) the outbox tables: the package's Alembic revisions.

The tables are not Django models: their one description is ``cms_outbox.schema`` and
their history the Alembic revisions, with their own version table, so a later
``manage.py migrate`` or ``cms-outbox migrate`` upgrades them the same way.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations


def upgrade(apps: Any, schema_editor: Any) -> None:
    from cms_outbox import database, migrate
    from cms_outbox.django import database_url

    engine = database.create(database_url(schema_editor.connection.alias))
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()


class Migration(migrations.Migration):
    atomic = False  # Alembic migrates on a connection of its own, under its own lock
    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [migrations.RunPython(upgrade, migrations.RunPython.noop, elidable=False)]
