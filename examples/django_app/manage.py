#!/usr/bin/env python
"""The example shop's manage.py: ``migrate`` creates Django's and the outbox's tables,
``cms_outbox_run`` runs the delivery daemon, ``runserver`` serves the views."""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
