"""The one door: what ``cms_outbox`` exports, the exception tree, and values that stay values."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import types
from collections.abc import Iterator
from typing import Any

import pytest

import cms_outbox
from cms_outbox import (
    ClientClosed,
    CMSClient,
    ConfigurationError,
    DirectoryNotFound,
    EventNotFound,
    EventState,
    FlushReport,
    InvoiceConflict,
    OutboxError,
    SchemaError,
    StorageError,
    TrackResult,
    ValidationError,
)

TOKEN = "secret-token-xyz"


def test_all_is_sorted() -> None:
    assert cms_outbox.__all__ == sorted(cms_outbox.__all__)


def test_all_lists_exactly_the_public_names() -> None:
    """Submodules and the __future__ import aside, every public name is in __all__."""
    defined = {
        name
        for name in dir(cms_outbox)  # with the names loaded on first use
        if not name.startswith("_")
        and not isinstance(getattr(cms_outbox, name), types.ModuleType)
        and type(getattr(cms_outbox, name)).__module__ != "__future__"  # annotations flag
    }
    assert defined == set(cms_outbox.__all__) - {"__version__"}
    for name in cms_outbox.__all__:
        assert getattr(cms_outbox, name) is not None


def test_star_import_gives_all() -> None:
    namespace: dict[str, object] = {}
    exec("from cms_outbox import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(cms_outbox.__all__)


def test_version_matches_the_distribution() -> None:
    assert cms_outbox.__version__ == importlib.metadata.version("cms-outbox")


# -- the exception tree (STYLE.md) ---------------------------------------------------------

TREE = [
    (ValidationError, (OutboxError, ValueError)),
    (InvoiceConflict, (ValidationError, OutboxError, ValueError)),
    (ConfigurationError, (OutboxError, ValueError)),
    (StorageError, (OutboxError,)),
    (SchemaError, (StorageError, OutboxError)),
    (DirectoryNotFound, (StorageError, OutboxError)),
    (EventNotFound, (OutboxError, LookupError)),
    (ClientClosed, (OutboxError, RuntimeError)),
]


@pytest.mark.parametrize(("error", "bases"), TREE, ids=[error.__name__ for error, _ in TREE])
def test_exception_tree(error: type[Exception], bases: tuple[type[Exception], ...]) -> None:
    """Catching the builtin a caller already expects must work, and so must OutboxError."""
    for base in bases:
        assert issubclass(error, base)
    assert error.__doc__ and error.__doc__.strip()  # says when it is raised


def test_storage_errors_are_not_value_errors() -> None:
    """An ``except ValueError`` around bad input must not swallow a database failure."""
    assert not issubclass(StorageError, ValueError)
    assert not issubclass(SchemaError, ValueError)
    assert issubclass(OutboxError, Exception)


def test_exceptions_are_reexported_from_one_module() -> None:
    errors = [error for error, _ in TREE] + [OutboxError]
    assert {error.__module__ for error in errors} == {"cms_outbox.errors"}


def test_validation_error_names_its_field() -> None:
    error = ValidationError("amount", "must be an integer number of cents")
    assert error.field == "amount"
    assert str(error) == "amount: must be an integer number of cents"


# -- values ------------------------------------------------------------------------------


def test_track_result_is_frozen() -> None:
    result = TrackResult(success=True, event_id="e-1", state=EventState.PENDING)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.success = False  # type: ignore[misc]
    assert (result.error, result.status_code, result.data) == (None, None, None)
    assert result == TrackResult(True, "e-1", EventState.PENDING)


def test_flush_report_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        FlushReport().delivered = 1  # type: ignore[misc]


def test_event_states_are_the_documented_words() -> None:
    """The same words in the API, the database column and ``status --json``."""
    assert [state.value for state in EventState] == [
        "pending",
        "in_flight",
        "delivered",
        "dead",
        "blocked",
    ]
    assert EventState("in_flight") is EventState.IN_FLIGHT
    assert EventState.DELIVERED == "delivered"  # type: ignore[comparison-overlap]
    assert str(EventState.DEAD) == "dead"


# -- the token stays out of reprs ------------------------------------------------------------


@pytest.fixture
def client(sqlite_url: str) -> Iterator[CMSClient]:
    with CMSClient(token=TOKEN, database_url=sqlite_url, flush="off") as client:
        yield client


def test_reprs_do_not_show_the_token(client: CMSClient) -> None:
    assert client.settings.token == TOKEN  # it is there, just not shown
    for shown in (repr(client), repr(client.settings), str(client.settings)):
        assert TOKEN not in shown
        assert "secret" not in shown
    assert "CMSClient" in repr(client)


def test_the_daemon_and_the_stats_value_are_exported() -> None:
    from cms_outbox import Daemon, Stats
    from cms_outbox.daemon import Daemon as DaemonClass
    from cms_outbox.status import Stats as StatsClass

    assert Daemon is DaemonClass and Stats is StatsClass
    assert dataclasses.is_dataclass(Stats)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Stats(0.0, 0, 0, 0, 0, 0, None).pending = 1  # type: ignore[misc]


@pytest.mark.parametrize("documented", [CMSClient, cms_outbox.Daemon])
def test_every_constructor_parameter_is_documented(documented: Any) -> None:
    import inspect

    names = [name for name in inspect.signature(documented.__init__).parameters if name != "self"]
    doc = documented.__doc__ or ""
    assert [name for name in names if f":param {name}:" not in doc] == []


def test_contributing_describes_every_test_marker() -> None:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    block = re.search(r"^markers = \[(.*?)^\]", (root / "pyproject.toml").read_text(), re.S | re.M)
    assert block is not None
    names = re.findall(r'^\s*"([\w-]+):', block.group(1), re.M)
    assert "slow" in names
    guide = (root / "CONTRIBUTING.md").read_text()
    assert '-m "not slow"' in guide
    for name in names:
        assert f"| `{name}` |" in guide, f"CONTRIBUTING.md does not describe the {name} marker"


def _requirements(pyproject: str, name: str) -> set[str]:
    """The distribution names of one requirement list of pyproject.toml, canonical."""
    import re

    block = re.search(rf"^{name} = \[(.*?)^\]", pyproject, re.S | re.M)
    assert block is not None, name
    specs = re.findall(r'"([A-Za-z0-9][\w.-]*)', block.group(1))
    return {re.sub(r"[-_.]+", "-", spec).lower() for spec in specs}


def test_the_test_extra_installs_every_module_the_tests_import() -> None:
    # `pip install -e '.[test]'` in a fresh virtualenv must be enough to run the suite.
    import ast
    import re
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    pyproject = (root / "pyproject.toml").read_text()
    declared = _requirements(pyproject, "dependencies") | _requirements(pyproject, "test")
    providers = importlib.metadata.packages_distributions()
    missing: dict[str, set[str]] = {}
    for path in sorted((root / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.partition(".")[0]
                if top in sys.stdlib_module_names or top in ("cms_outbox", "tests"):
                    continue
                dists = {re.sub(r"[-_.]+", "-", d).lower() for d in providers.get(top, [])}
                if not dists & declared:
                    missing.setdefault(top, set()).add(path.name)
    assert missing == {}
