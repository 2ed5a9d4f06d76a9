"""Random sequences of inputs (signals, exits, answers, directives, reload results, time) never break the
supervisor's invariants: never two Ollamas at once, nothing started after a stop, an exit code whenever it stops,
and no input ever meets a state without a row in the table."""

from __future__ import annotations

import signal

from hypothesis import given, settings
from hypothesis import strategies as st

from launcher.directives import Fail, RestartWith
from launcher.lifecycle import State
from tests.supervisor_fakes import NEW_PLAN, FakeWatcher, exits, rig

ACTIONS = st.lists(st.one_of(
    st.tuples(st.just("time"), st.floats(0.001, 40.0)),
    st.tuples(st.just("signal"), st.sampled_from([signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1])),
    st.tuples(st.just("exit"), st.sampled_from([0, 1, 2, 137])),
    st.tuples(st.just("answer"), st.sampled_from([True, False, None])),
    st.tuples(st.just("restart"), st.booleans()),
    st.tuples(st.just("fail"), st.just(4)),
    st.tuples(st.just("job"), st.just(0)),
    st.tuples(st.just("runner"), st.booleans()),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ACTIONS)
def test_invariants_hold_for_any_sequence(actions: list[tuple[str, object]]) -> None:
    """Whatever arrives in whatever order, the invariants hold after every tick."""
    watcher = FakeWatcher()
    r = rig(reload=lambda: NEW_PLAN, watcher=watcher, backoff=0.5, restart_max=3)
    r.tick()
    for kind, arg in actions:
        live = [c for c in r.system.spawned if not c.done.is_set()]
        if kind == "time":
            r.system.t += float(arg)  # type: ignore[arg-type]
        elif kind == "signal":
            r.sup.on_signal(int(arg))  # type: ignore[call-overload]
        elif kind == "exit" and live:
            exits(live[0], int(arg))  # type: ignore[call-overload]
        elif kind == "answer" and r.system.probes:
            child, report = r.system.probes[-1]
            report(child.pid, "0.32.15", arg, None)  # type: ignore[arg-type]
        elif kind == "restart":
            r.policy.directives.append(RestartWith(NEW_PLAN, "remedy", immediately=bool(arg)))
        elif kind == "fail":
            r.policy.directives.append(Fail(4))
        elif kind == "job" and r.system.jobs:
            r.system.run_job()
        elif kind == "runner":
            watcher.model_runner = bool(arg)
        r.tick()
        live = [c for c in r.system.spawned if not c.done.is_set()]
        assert len(live) <= 1, "two Ollamas alive at once"
        kinds = [("end" if e.kind == "state" and e.data.get("to") in ("stopping", "stopped") else e.kind)
                 for e in r.events]
        if "end" in kinds:
            assert "ollama_started" not in kinds[kinds.index("end"):], "started after a stop"
        if r.sup.state is State.STOPPED:
            assert r.sup.exit_status is not None
        if r.sup.state is State.RUNNING:
            assert any(f[0] == "READY=1" for f in r.notifier.sent)
        if r.sup.state in (State.RESTARTING, State.STOPPING):
            assert r.sup.ollama is not None
