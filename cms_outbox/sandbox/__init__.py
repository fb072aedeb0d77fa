"""A local CMS-compatible API server for development, tests and benchmarks.

>>> from cms_outbox.sandbox import Sandbox
>>> with Sandbox(token="test-token") as sb:  # doctest: +SKIP
...     sb.set_faults(force_status=503, force_count=2, retry_after="1")
...     sb.set_limits(requests=30, window=6, headers="x")  # 30 per 6 s, X-RateLimit-*

It re-implements the wire protocol (DESIGN.md section 1) instead of importing the
client's helpers, so a client bug cannot hide in shared code. Standard library only.
"""

from __future__ import annotations

from cms_outbox.sandbox.faults import Faults
from cms_outbox.sandbox.limits import Limits
from cms_outbox.sandbox.server import Sandbox, run
from cms_outbox.sandbox.state import Accepted, RequestRecord

__all__ = ["Accepted", "Faults", "Limits", "RequestRecord", "Sandbox", "run"]
