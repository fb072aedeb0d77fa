"""What every command shares: exit codes, options, settings, opening the outbox, output."""

from __future__ import annotations

import argparse
import errno
import json
import re
import sys
from collections.abc import Sequence
from typing import Any, Callable, NoReturn

from .. import config, sqlite_path
from ..client import CMSClient
from ..config import Settings
from ..database import display_url
from ..database import parse as parse_url
from ..errors import ConfigurationError
from ..formatting import format_age, isoformat
from ..reader import OutboxReader
from .arguments import positive_int, rate_limit

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_NO_DIRECTORY",
    "EXIT_NO_FLUSHER",
    "EXIT_OK",
    "EXIT_STORAGE",
    "EXIT_USAGE",
    "Handler",
    "HelpFormatter",
    "Parser",
    "add_command",
    "echo",
    "echo_json",
    "format_time",
    "mask_url",
    "open_client",
    "open_reader",
    "resolve_settings",
    "table",
]

EXIT_OK = 0
EXIT_FAILURE = 1  # unhealthy, work left, a retry that could not be done, a failed demo
EXIT_USAGE = 2  # bad arguments or configuration (argparse uses 2 as well)
EXIT_STORAGE = 3  # the database failed, is not migrated, or is newer than this code
EXIT_NOT_FOUND = 4  # an event id that is not in the outbox
EXIT_NO_DIRECTORY = 5  # a SQLite outbox's directory is missing (--create-directories)
EXIT_NO_FLUSHER = 6  # health: events wait and no flusher is running
EXIT_INTERRUPTED = 130  # Ctrl-C during a command that is not a daemon

Handler = Callable[[argparse.Namespace], int]

# -- commands ----------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """Usage errors in one line that points at ``--help`` (argparse prints the whole usage)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse takes only a plain negative number for a value, so `-1d` became an
        # unknown option ("expected one argument"); Python 3.13's own rule, anything that
        # starts with "-" and a digit is a value, lets the option's type refuse it in words.
        # No option of ours looks like a negative number.
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.HelpFormatter):
    """Wraps one-paragraph descriptions; keeps the line breaks of examples and notes."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def add_command(
    subparsers: Any,
    name: str,
    handler: Handler,
    *,
    summary: str,
    description: str,
    examples: Sequence[str],
    notes: str = "",
    creates: bool = False,
) -> argparse.ArgumentParser:
    """A subcommand whose help ends with examples (a test checks that every one has them).

    :param creates: the command can create a missing outbox, so it takes
        ``--create-directories``; the others never create one, so they do not.
    """
    epilog = "examples:\n" + "\n".join(f"  {example}" for example in examples)
    if notes:
        epilog += "\n\n" + notes.strip("\n")
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=HelpFormatter,
    )
    add_common_options(parser, suppress=True, creates=creates)
    parser.set_defaults(handler=handler, command_parser=parser)
    return parser


def add_common_options(
    parser: argparse.ArgumentParser, *, suppress: bool, creates: bool = False
) -> None:
    """``--database-url`` and ``--verbose``, on the top level and on every subcommand, and
    ``--create-directories`` on the commands that create an outbox (``creates``).

    On subcommands the defaults are suppressed, so ``cms-outbox --verbose status`` and
    ``cms-outbox status --verbose`` both work (a subparser default would win otherwise).
    """
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--database-url",
        metavar="URL",
        default=default,
        help="outbox database (default: env CMS_OUTBOX_URL, else sqlite:///cms_outbox.db)",
    )
    if creates:
        parser.add_argument(
            "--create-directories",
            action="store_true",
            help="create a SQLite outbox's missing parent directories (default: a missing "
            "directory is an error, exit code 5)",
        )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="debug logging, and a traceback with errors",
    )


def add_delivery_options(parser: argparse.ArgumentParser) -> None:
    """The options of the commands that send (``run``, ``flush``)."""
    parser.add_argument(
        "--host",
        metavar="URL",
        help="CMS API base (default: env CMS_HOST, else https://api.cme.sh)",
    )
    parser.add_argument(
        "--rate-limit",
        metavar="N|auto",
        type=rate_limit,
        help="requests per minute for all flushers of this outbox together: auto follows "
        "the service's rate-limit headers and 429s, N is a ceiling, 0 = unpaced "
        "(default: auto)",
    )
    parser.add_argument(
        "--workers", metavar="N", type=positive_int, help="concurrent requests (default: 8)"
    )


# -- settings and the outbox -------------------------------------------------------------


def resolve_settings(args: argparse.Namespace, *, deliver: bool = False) -> Settings:
    """Flags, then the environment, then defaults, through ``config.resolve``.

    :param deliver: the command sends events: it needs the token (from the environment
        only, never a flag: flags show in process lists) and takes the delivery options.
    :raises ConfigurationError: a setting that cannot work, or no token to send with.
    """
    explicit: dict[str, Any] = {
        "database_url": args.database_url,
        "create_directories": getattr(args, "create_directories", False),
        "flush": "off",
    }
    if deliver:
        explicit["host"] = args.host
        explicit["workers"] = args.workers
        explicit["interval"] = getattr(args, "interval", None)
        explicit["rate_limit"] = args.rate_limit
    settings = config.resolve(**explicit)
    if deliver and not settings.token:
        raise ConfigurationError(
            "no token: set the CMS_BEARER_TOKEN environment variable "
            "(the token is never taken as a flag, flags show in process lists)"
        )
    return settings


def open_client(settings: Settings, *, migrate: bool, **options: Any) -> CMSClient:
    """A ``CMSClient`` without a background flusher on an existing outbox.

    A SQLite file that does not exist is an error, never created: run in the wrong
    directory, ``flush`` would report an empty new outbox as "nothing left".

    :param migrate: bring the tables to the current schema; without it, a database
        that is not migrated is an error.
    :raises SchemaError: missing, not migrated (and ``migrate`` is off), or newer than
        this code.
    """
    _require_existing_file(settings.database_url)
    return CMSClient(
        token=settings.token,
        host=settings.host,
        database_url=settings.database_url,
        create_directories=settings.create_directories,
        flush="off",
        rate_limit=settings.rate_limit,
        workers=settings.workers,
        interval=settings.interval,
        auto_migrate=migrate,
        **options,
    )


def open_reader(settings: Settings) -> OutboxReader:
    """A read-only view of ``settings``' outbox: no flusher, no migration, no token.

    :raises SchemaError: missing, not migrated, or newer than this code.
    """
    return OutboxReader(settings.database_url)


def _require_existing_file(url: str) -> None:
    # Without this, SQLite would create an empty file just to report it unmigrated.
    try:
        parsed = parse_url(url)
    except ConfigurationError:
        return  # CMSClient reports a malformed URL
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return
    if not path.startswith("file:"):
        sqlite_path.prepare(path, create=False, create_directories=False, writable=True)


def cannot_listen(host: str, port: int, exc: OSError) -> ConfigurationError:
    """The one-line error of a server that could not listen on ``host:port``."""
    if exc.errno == errno.EADDRINUSE:
        why = "address already in use (another server? choose another --port, or 0 for a free one)"
    else:
        why = (exc.strerror or str(exc)).lower()
    return ConfigurationError(f"cannot listen on {host}:{port}: {why}")


def mask_url(url: str) -> str:
    """The database URL for logs and output: password masked, a SQLite path made absolute."""
    try:
        return display_url(url)
    except ConfigurationError:
        return "<invalid database URL>"


# -- output --------------------------------------------------------------------------------


def echo(text: str = "") -> None:
    """One line on stdout (the library never prints; only the CLI does)."""
    sys.stdout.write(text + "\n")


def echo_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain left-aligned text table."""
    cells = [[str(header) for header in headers]] + [
        ["" if cell is None else str(cell) for cell in row] for row in rows
    ]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def format_time(moment: float | None, now: float) -> str:
    """``2026-11-28 10:30:51Z (3m12s ago)``, or ``-``."""
    if moment is None:
        return "-"
    text = (isoformat(moment) or "").replace("T", " ")[:19] + "Z"
    delta = now - moment
    relative = f"{format_age(delta)} ago" if delta >= 0 else f"in {format_age(-delta)}"
    return f"{text} ({relative})"


def shorten(text: str | None, limit: int = 60) -> str:
    """``text`` on one line, cut at a word boundary with ``...`` if longer than ``limit``."""
    if not text:
        return ""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 3]
    if text[limit - 3] != " " and " " in cut:  # not mid-word: "connection ref..." misleads
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:(") + "..."
