"""``manage.py cms_outbox_run``: the delivery daemon on Django's database."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand

from cms_outbox import cli
from cms_outbox.django import database_url


class Command(BaseCommand):
    help = (
        "Deliver the outbox in Django's database until SIGTERM: `cms-outbox run` with "
        "--database-url taken from DATABASES (--database ALIAS, default 'default'); every "
        "other option is `cms-outbox run`'s, e.g. `manage.py cms_outbox_run --workers 8`."
    )

    def run_from_argv(self, argv: list[str]) -> None:
        # `cms-outbox run` parses its own options; Django's parser would reject them.
        options = list(argv[2:])
        alias = "default"
        if "--database" in options:
            at = options.index("--database")
            alias = options[at + 1]
            del options[at : at + 2]
        sys.exit(cli.main(["run", "--database-url", database_url(alias), *options]))

    def handle(self, *args: Any, **options: Any) -> None:  # call_command("cms_outbox_run")
        sys.exit(cli.main(["run", "--database-url", database_url()]))
