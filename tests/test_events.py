"""The Event type and its JSON-lines record/replay."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from launcher.events import SOURCES, Event, EventError, Replay, record

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20) | st.floats(
    allow_nan=False, allow_infinity=False
)
json_data = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
events = st.builds(
    Event,
    source=st.sampled_from(SOURCES),
    kind=st.text(min_size=1, max_size=20),
    t=st.floats(min_value=0, max_value=1e9, allow_nan=False),
    pid=st.none() | st.integers(0, 2**22),
    data=st.dictionaries(st.text(max_size=10), json_data, max_size=5),
)


class TestEvent:
    @given(st.lists(events, max_size=20))
    def test_round_trip(self, evs: list[Event]) -> None:
        """Whatever is recorded replays equal, one event per line."""
        out = io.StringIO()
        assert record(evs, out) == len(evs)
        text = out.getvalue()
        assert text.count("\n") == len(evs)
        replay = Replay(io.StringIO(text))
        assert list(replay) == evs
        assert replay.skipped == 0

    def test_data_is_immutable(self) -> None:
        """The board may share events freely: their data cannot change."""
        event = Event("log", "k", 1.0, None, {"a": [1, 2], "b": {"c": 1}})
        with pytest.raises(TypeError):
            event.data["a"] = 3  # type: ignore[index]
        assert event.data["a"] == (1, 2)

    @pytest.mark.parametrize(
        ("kwargs", "reason"),
        [
            ({"source": "gpu"}, "bad source"),
            ({"kind": ""}, "bad kind"),
            ({"t": float("nan")}, "bad t"),
            ({"pid": -1}, "bad pid"),
            ({"data": {"x": object()}}, "bad data"),
            ({"data": {"x": float("inf")}}, "bad data"),
        ],
    )
    def test_invalid_events_refused(self, kwargs: dict[str, object], reason: str) -> None:
        """Constructing an invalid event raises EventError with a countable reason."""
        base: dict[str, object] = {"source": "log", "kind": "k", "t": 0.0, "pid": None, "data": {}}
        with pytest.raises(EventError) as info:
            Event(**{**base, **kwargs})  # type: ignore[arg-type]
        assert info.value.reason == reason


class TestReplay:
    def test_corrupt_lines_skipped_and_counted(self) -> None:
        """Bad lines are skipped, counted by reason and located; good lines around them survive."""
        good = [Event("shim", "hello", 1.0, 42, {"exe": "/bin/x"}), Event("log", "version", 2.0)]
        text = "\n".join([
            good[0].to_json(),
            '{"source": "log", "kind": "x"',  # truncated
            "\x00\xff binary",
            '{"source":"nvml","kind":"k","t":1,"pid":null,"data":{},"extra":1}',
            '{"source":"nvml","kind":"k","t":"soon"}',
            "[1, 2]",
            "",
            good[1].to_json(),
        ])
        replay = Replay(io.StringIO(text))
        assert list(replay) == good
        assert replay.skipped == 5
        assert replay.bad == {"not JSON": 2, "unknown field": 1, "bad t": 1, "not an object": 1}
        assert replay.bad_lines == [2, 3, 4, 5, 6]
