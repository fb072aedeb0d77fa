"""The sandbox's rate limit answers 429 past its budget and advertises it in the headers chosen."""

from __future__ import annotations

from cms_outbox.sandbox import Limits, Sandbox
from tests.sandbox_requests import LEAD, TOKEN, assert_error, http, post

__all__ = ["http"]  # the fixtures: pytest finds them here


# -- rate limit ----------------------------------------------------------------------


def test_rate_limit_answers_429_with_integer_retry_after(http):
    with Sandbox(token=TOKEN, rate_limit=5) as sandbox:
        for _ in range(3):  # unauthenticated requests do not use the budget
            assert post(http, sandbox, "lead", LEAD, token="bad").status_code == 401
        statuses = [post(http, sandbox, "lead", LEAD).status_code for _ in range(5)]
        limited = post(http, sandbox, "lead", LEAD)
        again = post(http, sandbox, "lead", LEAD)

        assert statuses == [200] * 5
        assert_error(limited, 429, "rate_limited")
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert again.status_code == 429
        assert len(sandbox.accepted) == 5
        sandbox.reset()  # forgets the window
        assert post(http, sandbox, "lead", LEAD).status_code == 200


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


T0 = 1_800_000_000.0  # a multiple of 6 and of 60: fixed windows start here


def test_ietf_headers_advertise_the_policy_and_what_is_left(http):
    clock = Clock(T0 + 1)
    limits = Limits(requests=3, window=6, accounting="fixed")
    with Sandbox(token=TOKEN, limits=limits, clock=clock) as sandbox:
        answers = [post(http, sandbox, "lead", LEAD) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert {a.headers["RateLimit-Policy"] for a in answers} == {'"default";q=3;w=6'}
        assert [a.headers["RateLimit"] for a in answers] == [
            '"default";r=2;t=5', '"default";r=1;t=5', '"default";r=0;t=5', '"default";r=0;t=5',
        ]  # fmt: skip
        assert answers[3].headers["Retry-After"] == "5"
        assert "Retry-After" not in answers[0].headers
        clock.now = T0 + 6  # the next fixed window
        assert post(http, sandbox, "lead", LEAD).headers["RateLimit"] == '"default";r=2;t=6'


def test_x_ratelimit_headers_give_the_reset_in_epoch_seconds(http):
    clock = Clock(T0 + 2.5)
    with Sandbox(token=TOKEN, limits=Limits(2, 6, "fixed", headers="x"), clock=clock) as sandbox:
        answer = post(http, sandbox, "lead", LEAD)
        assert answer.headers["X-RateLimit-Limit"] == "2"
        assert answer.headers["X-RateLimit-Remaining"] == "1"
        assert answer.headers["X-RateLimit-Reset"] == str(int(T0 + 6))
        assert "RateLimit-Policy" not in answer.headers


def test_no_headers_still_limits_and_answers_retry_after(http):
    clock = Clock(T0)
    with Sandbox(token=TOKEN, limits=Limits(1, 6, "fixed", headers="none"), clock=clock) as sandbox:
        assert not {"RateLimit", "X-RateLimit-Limit"} & set(
            post(http, sandbox, "lead", LEAD).headers
        )
        refused = post(http, sandbox, "lead", LEAD)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "6"


def test_sliding_window_frees_one_request_at_a_time(http):
    clock = Clock(T0 + 5)
    limits = Limits(2, 6, accounting="sliding")
    with Sandbox(token=TOKEN, limits=limits, clock=clock) as sandbox:
        assert post(http, sandbox, "lead", LEAD).status_code == 200  # at T0+5
        clock.now = T0 + 7
        assert post(http, sandbox, "lead", LEAD).status_code == 200  # a fixed window would reset
        clock.now = T0 + 8
        refused = post(http, sandbox, "lead", LEAD)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "3"  # T0+11
        clock.now = T0 + 11
        assert post(http, sandbox, "lead", LEAD).status_code == 200


def test_limits_change_while_running_through_the_admin_endpoint(http):
    clock = Clock(T0)
    with Sandbox(token=TOKEN, clock=clock) as sandbox:
        assert "RateLimit" not in post(http, sandbox, "lead", LEAD).headers  # off by default
        changed = http.post(
            f"{sandbox.url}/_admin/limits", json={"requests": 1, "window": 6, "accounting": "fixed"}
        )
        assert changed.json()["limits"] == {
            "requests": 1, "window": 6, "accounting": "fixed", "headers": "ietf",
        }  # fmt: skip
        assert post(http, sandbox, "lead", LEAD).status_code == 200
        assert post(http, sandbox, "lead", LEAD).status_code == 429
        sandbox.set_limits(requests=120)
        assert post(http, sandbox, "lead", LEAD).headers["RateLimit-Policy"].endswith("q=120;w=6")
        for bad in ({"requests": -1}, {"window": 0}, {"headers": "github"}, {"speed": 1}, [1]):
            answer = http.post(f"{sandbox.url}/_admin/limits", json=bad)
            assert answer.status_code == 400, bad
        assert http.get(f"{sandbox.url}/_admin/limits").json()["limits"]["requests"] == 120
