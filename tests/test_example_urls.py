"""The database URLs the examples and the docs suggest name a driver the extras install."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# A URL as the docs write them: ``postgresql://...``, `mysql+pymysql://root@127.0.0.1/test`.
URL = re.compile(r"\b((?:postgres(?:ql)?|mysql|mariadb)(?:\+\w+)?)://")
DOCUMENTS = sorted(
    [
        ROOT / "README.md",
        ROOT / "CONTRIBUTING.md",
        *(ROOT / "docs").rglob("*.md"),
        *(ROOT / "examples").rglob("*.py"),
        *(ROOT / "examples").rglob("*.md"),
    ]
)


def extra_packages(extra: str) -> set[str]:
    """The distributions ``cms-outbox[extra]`` installs, by name."""
    marker = f'extra == "{extra}"'
    return {
        re.split(r"[\[<>=;! ]", requirement, maxsplit=1)[0].lower()
        for requirement in importlib.metadata.requires("cms-outbox") or []
        if requirement.endswith(marker)
    }


DRIVERS = {"postgresql": extra_packages("postgres"), "mysql": extra_packages("mysql")}


def test_the_extras_install_psycopg_and_pymysql() -> None:
    assert DRIVERS == {"postgresql": {"psycopg"}, "mysql": {"pymysql"}}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_url_names_the_driver_its_extra_installs(document: Path) -> None:
    """`postgresql://` means psycopg2 to SQLAlchemy 2.0 and `mysql://` mysqlclient: neither
    is installed by `[postgres]` or `[mysql]`, so such a URL fails with a missing driver."""
    for scheme in URL.findall(document.read_text()):
        backend, _, driver = scheme.partition("+")
        assert backend in DRIVERS, f"{document.name}: {scheme}:// is not a supported backend"
        assert driver in DRIVERS[backend], (
            f"{document.name}: {scheme}:// names no driver we install"
        )
