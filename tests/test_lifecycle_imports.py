"""A start imports Alembic only to migrate and APScheduler only to flush: what a script needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import TOKEN
from tests.lifecycle_scripts import child_env

# -- imports: only what a start needs ------------------------------------------------------

IMPORTS = """
import sys
watched = {"alembic", "apscheduler", "requests", "sqlalchemy.dialects.postgresql",
           "cms_outbox.daemon", "cms_outbox.status", "cms_outbox.queries.browse",
           "cms_outbox.queries.overview", "cms_outbox.queries.selection"}
import cms_outbox
print(sorted(set(sys.modules) & watched))
from cms_outbox import CMSClient
CMSClient(database_url=sys.argv[1], flush=sys.argv[2]).close()
print(sorted(set(sys.modules) & watched))
"""


def loaded(url: str, flush: str, cwd: Path) -> list[list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS, url, flush],
        cwd=cwd,
        env=child_env(CMS_BEARER_TOKEN=TOKEN),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return [json.loads(line.replace("'", '"')) for line in done.stdout.splitlines()]


def test_a_start_imports_alembic_only_to_migrate_and_apscheduler_only_to_flush(
    tmp_path: Path,
) -> None:
    """Nor requests (the transport is urllib3's), the PostgreSQL dialect on SQLite, the
    daemon, the reporting package or the dashboard's queries: a short script needs none."""
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    before, after = loaded(url, "off", tmp_path)  # a new outbox is migrated (by Alembic)
    assert before == [] and "alembic" in after
    assert loaded(url, "off", tmp_path) == [[], []]  # one query finds it at head
    assert loaded(url, "background", tmp_path) == [[], ["apscheduler"]]
