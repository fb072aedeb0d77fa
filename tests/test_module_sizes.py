"""Every module of the package stays under 400 lines: past a few hundred, a module holds
more than one job (STYLE.md), and a long one is split by job, not squeezed."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cms_outbox"


def test_every_module_of_the_package_is_under_400_lines() -> None:
    sizes = {
        str(path.relative_to(PACKAGE.parent)): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    assert {path: size for path, size in sizes.items() if size >= 400} == {}
