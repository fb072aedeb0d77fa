"""``ui``: serve the dashboard with waitress, on 127.0.0.1 unless a password is set."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from typing import Any

from .. import config
from ..errors import ConfigurationError
from ._common import EXIT_OK, add_command, cannot_listen, echo, mask_url, resolve_settings
from .arguments import port

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers,
        "ui",
        cmd_ui,
        summary="serve the web dashboard (overview, events, retry, purge)",
        description="Serve the outbox dashboard with waitress until Ctrl-C or SIGTERM: "
        "counts, activity chart, events with filters, each event's attempts, and the retry "
        "and purge actions (hidden and refused with --read-only). Prints its URL on stdout "
        "once it listens. Needs the ui extra: pip install 'cms-outbox[ui]'.",
        examples=[
            "cms-outbox ui --database-url sqlite:///outbox.db",
            "cms-outbox ui --read-only --port 8080",
            "CMS_OUTBOX_UI_PASSWORD=... cms-outbox ui --bind 0.0.0.0",
        ],
        notes="Any address but the loopback needs CMS_OUTBOX_UI_PASSWORD (HTTP Basic, any\n"
        "user name); it is never a flag and never the CMS token. With it set, every\n"
        "request needs it, on the loopback too.",
    )
    parser.add_argument(
        "--bind", default="127.0.0.1", metavar="ADDR", help="interface (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=port, default=8000, help="0 picks a free port (default: 8000)"
    )
    parser.add_argument(
        "--read-only", action="store_true", help="no actions: every request but GET is refused"
    )


def cmd_ui(args: argparse.Namespace) -> int:
    settings = resolve_settings(args)
    password = config.dashboard_password()
    try:
        from waitress import create_server

        from ..web import Dashboard
        from ..web.security import is_loopback
    except ImportError as exc:
        raise ConfigurationError(
            f"the dashboard needs the ui extra ({exc.name} is missing): "
            "pip install 'cms-outbox[ui]'"
        ) from exc
    if password is None and not is_loopback(args.bind):
        raise ConfigurationError(
            f"--bind {args.bind} would serve the dashboard beyond this machine: set "
            "CMS_OUTBOX_UI_PASSWORD to a password of its own first"
        )
    dashboard = Dashboard(settings.database_url, read_only=args.read_only, password=password)
    try:
        try:
            _check_free(args.bind, args.port)
            server: Any = create_server(
                dashboard, host=args.bind, port=args.port, ident="cms-outbox"
            )
        except OSError as exc:
            raise cannot_listen(args.bind, args.port, exc) from exc
        host = server.effective_host
        shown = f"[{host}]" if ":" in str(host) else host
        mode = " (read-only)" if args.read_only else ""
        echo(f"dashboard for {mask_url(settings.database_url)} at http://{shown}:"
             f"{server.effective_port}/{mode}")  # fmt: skip
        sys.stdout.flush()  # a supervisor or test waits for this line
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            server.run()
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            server.close()
    finally:
        dashboard.close()
    return EXIT_OK


def _check_free(host: str, port: int) -> None:
    """Bind what waitress will bind, and let go: a waitress that fails to bind leaves its
    threads and sockets behind.

    :raises OSError: the address is in use, not this machine's, or not found.
    """
    if port == 0:
        return
    for family, kind, proto, _, address in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as waitress does
            probe.bind(address)
