"""The Django app: its migration creates the outbox tables, its command runs the daemon."""

from __future__ import annotations

from django.apps import AppConfig


class CmsOutboxConfig(AppConfig):
    name = "cms_outbox.django"
    label = "cms_outbox"
    verbose_name = "CMS outbox"
