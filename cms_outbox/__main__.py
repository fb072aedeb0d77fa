"""``python -m cms_outbox``: the same as the ``cms-outbox`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
