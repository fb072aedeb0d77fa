"""The user row and its CMS events in one ``transaction.atomic()`` block: both or neither."""

from __future__ import annotations

import os
import signal

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from cms_outbox.django import get_client


@csrf_exempt
def signup(request: HttpRequest) -> JsonResponse:
    """POST username, click_id; ``fail=after_insert`` rolls the whole signup back,
    ``referral=broken`` rolls back only the referral's savepoint, ``die=after_commit``
    kills the process once the transaction has committed."""
    form = request.POST
    outbox = get_client()
    with transaction.atomic():
        user = User.objects.create_user(form["username"])
        lead = outbox.track_lead(
            "signup", f"user-{user.pk}", form.get("click_id"), connection=connection
        )
        if form.get("referral"):
            try:
                with transaction.atomic():  # a savepoint
                    outbox.track_lead(
                        "referral", f"user-{user.pk}", form.get("click_id"), connection=connection
                    )
                    if form["referral"] == "broken":
                        raise ValueError("unknown referrer")
            except ValueError:
                pass  # the referral is dropped; the signup goes on
        if form.get("fail") == "after_insert":
            raise RuntimeError("signup failed after the insert")
    if form.get("die") == "after_commit":
        os.kill(os.getpid(), signal.SIGKILL)
    return JsonResponse({"user": user.pk, "event_id": lead.event_id})


@csrf_exempt
def purchase(request: HttpRequest) -> JsonResponse:
    form = request.POST
    with transaction.atomic():
        sale = get_client().track_sale(
            "purchase", form["customer"], form["invoice_id"], int(form["amount"]), "USD",
            click_id=form.get("click_id"), connection=connection,
        )  # fmt: skip
    return JsonResponse({"event_id": sale.event_id})
