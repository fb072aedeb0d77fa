"""``stored_result``, the enqueue's shortcut past ``TrackResult.__init__``, builds exactly
what ``TrackResult(...)`` builds, and refuses to run on a ``TrackResult`` it cannot copy."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from cms_outbox import EventState, TrackResult
from cms_outbox.results import skips_init_soundly, stored_result


@pytest.mark.parametrize("state", list(EventState))
def test_a_stored_result_is_what_the_dataclass_builds(state: EventState) -> None:
    shortcut = stored_result("e-1", state)
    built = TrackResult(success=True, event_id="e-1", state=state)
    assert type(shortcut) is TrackResult
    assert vars(shortcut) == vars(built)
    assert list(vars(shortcut)) == [f.name for f in dataclasses.fields(TrackResult)]
    assert (shortcut, hash(shortcut), repr(shortcut)) == (built, hash(built), repr(built))
    assert dict(shortcut) == dict(built) == {"status": True, "data": None}
    with pytest.raises(dataclasses.FrozenInstanceError):
        shortcut.success = False  # type: ignore[misc]


def test_track_result_is_one_the_shortcut_can_build() -> None:
    assert skips_init_soundly(TrackResult)


@dataclass(frozen=True)
class _Plain:
    success: bool
    event_id: str
    state: EventState
    error: str | None = None


@dataclass(frozen=True)
class _WithPostInit(_Plain):
    def __post_init__(self) -> None:
        object.__setattr__(self, "error", "set by __post_init__")


@dataclass(frozen=True)
class _WithSlots:
    __slots__ = ("success", "event_id", "state")
    success: bool
    event_id: str
    state: EventState


@dataclass(frozen=True)
class _WithRequiredField:
    attempts: int
    success: bool
    event_id: str
    state: EventState


@dataclass(frozen=True)
class _WithFactory(_Plain):
    tags: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class _WithComputedField(_Plain):
    digest: str = field(init=False, default="")


@pytest.mark.parametrize(
    "cls",
    [_WithPostInit, _WithSlots, _WithRequiredField, _WithFactory, _WithComputedField],
    ids=lambda cls: cls.__name__,
)
def test_a_result_class_the_shortcut_would_misbuild_is_refused(cls: type) -> None:
    assert skips_init_soundly(_Plain)
    assert not skips_init_soundly(cls)


def test_a_given_field_the_class_lacks_is_refused() -> None:
    assert not skips_init_soundly(_Plain, ("success", "event_id", "state", "data"))
