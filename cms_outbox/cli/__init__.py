"""``cms-outbox``: operate an outbox from the shell (also ``python -m cms_outbox``).

Each command resolves its settings (flags, then ``CMS_*`` environment, then
defaults), calls the library and prints. The CLI configures logging, the library does
not (except for a ``Daemon`` whose application configured none).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from ..__version__ import __version__
from ..errors import (
    ConfigurationError,
    DirectoryNotFound,
    EventNotFound,
    OutboxError,
    StorageError,
    ValidationError,
)
from ..stderr_log import log_to_stderr
from . import browsing, delivery, maintenance, reporting, tools, ui
from ._common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_NO_DIRECTORY,
    EXIT_NO_FLUSHER,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_STORAGE,
    EXIT_USAGE,
    HelpFormatter,
    Parser,
    add_common_options,
)

__all__ = ["build_parser", "main"]

EPILOG = f"""\
exit codes:
  {EXIT_OK}    success (health: healthy; flush: nothing left due)
  {EXIT_FAILURE}    failure: unhealthy, work left after flush, an event that cannot be retried,
       a failed demo
  {EXIT_USAGE}    usage or configuration error: bad arguments, invalid database URL or host,
       no token for run/flush, an EVENT_ID prefix shared by several events
  {EXIT_STORAGE}    storage error: database unreachable, missing or not migrated
       (run `cms-outbox migrate`), or migrated by a newer cms-outbox
  {EXIT_NOT_FOUND}    an EVENT_ID (or prefix) that is not in the outbox
  {EXIT_NO_DIRECTORY}    the directory of a SQLite outbox does not exist (a mistyped path?):
       nothing was created; `migrate --create-directories` creates it
  {EXIT_NO_FLUSHER}    health: the one finding is that no flusher is running while events have
       waited over 3 minutes (none beat in that time: start `cms-outbox run`)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C) outside the daemon

environment:
  CMS_OUTBOX_URL     outbox database (flag --database-url wins; default sqlite:///cms_outbox.db)
  CMS_BEARER_TOKEN   the API token for run and flush (never a flag: flags show in ps)
  CMS_HOST           the API base for run and flush (flag --host wins; default https://api.cme.sh)

examples:
  cms-outbox migrate --database-url sqlite:///outbox.db
  CMS_BEARER_TOKEN=... cms-outbox run --database-url sqlite:///outbox.db
  cms-outbox status --json
  cms-outbox health --max-pending-age 10m || alert"""


CREATE_DIRECTORIES = "--create-directories"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="cms-outbox",
        description="Operate a cms_outbox: deliver, inspect, retry and purge tracked events.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_common_options(parser, suppress=False)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    delivery.register(subparsers)
    reporting.register(subparsers)
    browsing.register(subparsers)
    maintenance.register(subparsers)
    tools.register(subparsers)
    ui.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (see ``cms-outbox --help``)."""
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:  # point at the command's own --help, not the top level's
            where = getattr(args, "command_parser", parser)
            if CREATE_DIRECTORIES in extras and hasattr(args, "create_directories"):
                # migrate or run, with the flag before the command's name
                where.error(
                    f"{CREATE_DIRECTORIES} goes after the command: "
                    f"`{where.prog} {CREATE_DIRECTORIES}`"
                )
            if CREATE_DIRECTORIES in extras:
                where.error(
                    f"{CREATE_DIRECTORIES} is an option of `migrate` and `run` only, the "
                    f"commands that create an outbox: `cms-outbox migrate {CREATE_DIRECTORIES}`"
                )
            where.error(f"unrecognized arguments: {' '.join(extras)}")
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    verbose = bool(args.verbose)
    log_to_stderr(verbose)
    try:
        code: int = handler(args)
        sys.stdout.flush()
        return code
    except OutboxError as exc:
        if verbose:
            traceback.print_exc(file=sys.stderr)
        sys.stderr.write(f"cms-outbox: error: {one_line(exc)}\n")
        return exit_code(exc)
    except KeyboardInterrupt:
        sys.stderr.write("cms-outbox: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `cms-outbox events | head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE


def exit_code(exc: OutboxError) -> int:
    """The documented exit code of an error."""
    if isinstance(exc, (ConfigurationError, ValidationError)):
        return EXIT_USAGE
    if isinstance(exc, DirectoryNotFound):
        return EXIT_NO_DIRECTORY
    if isinstance(exc, StorageError):
        return EXIT_STORAGE
    if isinstance(exc, EventNotFound):
        return EXIT_NOT_FOUND
    return EXIT_FAILURE


def one_line(exc: BaseException) -> str:
    """The first line of an error's message: driver errors append SQL and links below it."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
