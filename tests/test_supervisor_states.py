"""Every transition of the supervisor's state machine and each fault of issue 14, on a fake clock and a fake OS.

These replace the subprocess tests of the crash loop (exit 5) and of OGPU_RESTART_MAX=0 (Ollama's code); the exit-5
path is still run end to end in tests/test_serve_faults.py (a stale server on the port).

Scenarios are plain functions (each returns its rig after asserting what it shows), so the last test can run them
all and check that together they walk every row of the transition table.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from launcher.directives import Fail, RestartWith
from launcher.exitcodes import Exit
from launcher.lifecycle import TRANSITIONS, IllegalTransition, State, Trigger, next_state
from launcher.proctree import ProcInfo
from tests.supervisor_fakes import GRACE, NEW_PLAN, PLAN, FakeWatcher, Rig, exits, rig

KILL, TERM = signal.SIGKILL, signal.SIGTERM


# --- starting ---------------------------------------------------------------------------------------------------


def starting_to_running_when_answered() -> Rig:
    r = rig()
    r.tick()
    assert r.sup.state is State.WAITING_READY
    assert r.system.guarded == [r.ollama.pid]  # the guardian learns the group before anything else happens
    r.tick(0.5)
    assert r.sup.state is State.WAITING_READY  # no answer yet: no READY
    r.answer()
    r.tick(0.6)
    assert r.sup.state is State.RUNNING
    assert ("READY=1", "STATUS=ollama 0.32.15 ready on 127.0.0.1:11434") in r.notifier.sent
    assert "ready" in r.log.events()
    return r


def waits_for_the_gate() -> Rig:
    r = rig()
    r.policy.gate = False
    r.tick()
    r.answer()
    r.tick(0.1)
    assert r.sup.state is State.WAITING_READY
    assert r.sup.next_timeout(0.1) == pytest.approx(0.05)  # the gate is polled, not waited on for a second
    r.policy.gate = True
    r.tick(0.15)
    assert r.sup.state is State.RUNNING
    return r


def spawn_failure_exits_127() -> Rig:
    r = rig()
    r.system.spawn_error = FileNotFoundError(2, "No such file or directory")
    r.tick()
    assert r.sup.state is State.STOPPED
    assert r.sup.exit_status == 127
    assert "ollama_not_started" in r.log.events()
    return r


def term_before_the_first_spawn_starts_nothing() -> Rig:
    r = rig()
    r.sup.on_signal(TERM)
    r.tick()
    assert r.sup.state is State.STOPPED
    assert r.sup.exit_status == Exit.OK
    assert r.system.spawned == []
    return r


def foreign_port_owner_is_never_ready() -> Rig:
    r = rig()
    r.tick()
    r.answer(owner=False, holder=4242)
    r.tick(0.1)
    r.tick(5.0)
    assert r.sup.state is State.WAITING_READY
    assert not any(f[0] == "READY=1" for f in r.notifier.sent)
    said = [kw for _l, e, kw in r.log.lines if e == "port_held_by_another"]
    assert said == [{"port": 11434, "holder_pid": 4242, "our_pid": r.ollama.pid,
                     "problem": "/api/version answers, but not from the Ollama we started",
                     "action": "not reporting ready; stop the other server (e.g. a stale ollama)"}]
    r.answer(owner=True)  # our Ollama took the port after all
    r.tick(5.1)
    assert r.sup.state is State.RUNNING
    return r


def answer_for_a_dead_ollama_is_ignored() -> Rig:
    r = rig(backoff=1.0)
    r.tick()
    old_probe = r.system.probes[-1]
    exits(r.ollama, 1)
    r.tick(0.2)
    r.tick(1.2)  # backoff over: a new Ollama
    assert len(r.system.spawned) == 2
    child, report = old_probe
    report(child.pid, "0.32.15", True, None)
    r.tick(1.3)
    assert r.sup.state is State.WAITING_READY
    return r


def discovery_time_remedy_restarts_before_ready() -> Rig:
    r = rig()
    r.policy.gate = False
    r.tick()
    r.answer()
    r.policy.directives.append(RestartWith(NEW_PLAN, "remedy for libcuda_not_found", immediately=True))
    r.tick(0.5)
    assert r.sup.state is State.RESTARTING
    assert not any(f[0] == "READY=1" for f in r.notifier.sent)  # no client was told before the fix
    exits(r.system.spawned[0], signum=TERM)
    r.tick(0.6)
    assert r.sup.state is State.WAITING_READY and r.system.plans[-1] is NEW_PLAN
    return r


def term_while_waiting_for_ready() -> Rig:
    r = rig()
    r.tick()
    r.sup.on_signal(TERM)
    r.tick(0.1)
    assert r.sup.state is State.STOPPING
    exits(r.ollama, signum=TERM)
    r.tick(0.2)
    assert r.sup.state is State.STOPPED and r.sup.exit_status == 128 + TERM
    return r


def clean_exit_before_ready() -> Rig:
    r = rig()
    r.tick()
    exits(r.ollama, 0)
    r.tick(0.1)
    assert r.sup.state is State.STOPPED and r.sup.exit_status == Exit.OK
    return r


# --- crashes ----------------------------------------------------------------------------------------------------


def crash_backs_off_then_starts_again() -> Rig:
    r = rig(backoff=2.0)
    r.ready()
    first = r.ollama
    exits(first, 3)
    r.tick(1.0)
    assert r.sup.state is State.BACKOFF
    assert r.system.group_kills == [(first.pid, KILL)]  # leftover runners of the dead group
    assert r.system.guarded[-1] == 0
    r.tick(2.999)
    assert r.sup.state is State.BACKOFF and len(r.system.spawned) == 1
    r.tick(3.0)
    assert r.sup.state is State.WAITING_READY
    assert len(r.system.spawned) == 2 and r.sup.restarts == 1
    return r


def crash_loop_gives_up_with_5() -> Rig:
    r = rig(restart_max=1, backoff=0.001)
    r.tick()
    exits(r.ollama, 1)
    r.tick(0.01)
    r.tick(0.02)  # restarted once
    exits(r.ollama, 1)
    r.tick(0.03)
    assert r.sup.state is State.STOPPED
    assert r.sup.exit_status == Exit.CRASH_LOOP
    assert "crash_loop" in r.log.events()
    return r


def no_restarts_configured_passes_ollamas_code() -> Rig:
    r = rig(restart_max=0)
    r.ready()
    exits(r.ollama, 9)
    r.tick(1.0)
    assert r.sup.state is State.STOPPED and r.sup.exit_status == 9
    return r


def clean_exit_stops_with_0() -> Rig:
    r = rig()
    r.ready()
    exits(r.ollama, 0)
    r.tick(1.0)
    assert r.sup.state is State.STOPPED and r.sup.exit_status == Exit.OK
    return r


def exit_while_waiting_for_ready_is_a_crash() -> Rig:
    r = rig()
    r.tick()
    exits(r.ollama, signum=signal.SIGSEGV)
    r.tick(0.5)
    assert r.sup.state is State.BACKOFF
    return r


def leftovers_killed_but_never_our_helpers() -> Rig:
    """After Ollama's exit its group is killed, and so is a runner that escaped to us; the guardian and a compiler
    the reload worker runs (with its own child) are ours and are left alone."""
    watcher = FakeWatcher()
    r = rig(watcher=watcher)
    r.ready()
    guardian, cc, cc1, escaped = 50, 60, 61, 70
    r.system.helper_pids = {guardian, cc}
    watcher.tree = [ProcInfo(guardian, 1, 0, ("sh",)), ProcInfo(cc, 1, 0, ("cc",)), ProcInfo(cc1, cc, 0, ("cc1",)),
                    ProcInfo(escaped, 1, 0, ("llama-server", "--model", "m"))]
    exits(r.ollama, 1)
    r.tick(1.0)
    assert r.system.group_kills == [(r.system.spawned[0].pid, KILL)]
    assert r.system.signals == [(escaped, KILL)]
    return r

# --- stopping ---------------------------------------------------------------------------------------------------


def term_stops_with_ollamas_code() -> Rig:
    r = rig()
    r.ready()
    r.sup.on_signal(TERM)
    r.tick(1.0)
    assert r.sup.state is State.STOPPING
    assert (r.ollama.pid, TERM) in r.system.signals
    assert ("STOPPING=1", "STATUS=stopping") in r.notifier.sent
    exits(r.ollama, 0)  # exit during stop
    r.tick(1.5)
    assert r.sup.state is State.STOPPED and r.sup.exit_status == Exit.OK
    assert len(r.system.spawned) == 1
    return r


def grace_over_kills_the_group_exit_137() -> Rig:
    r = rig()
    r.ready()
    r.sup.on_signal(signal.SIGINT)
    r.tick(1.0)
    r.tick(1.0 + GRACE - 0.001)
    assert r.system.group_kills == []
    r.tick(1.0 + GRACE)
    assert r.system.group_kills == [(r.ollama.pid, KILL)]
    exits(r.ollama, signum=KILL)
    r.tick(1.0 + GRACE + 0.01)
    assert r.sup.state is State.STOPPED and r.sup.exit_status == 128 + KILL
    assert ("info", "stopped", {"ollama_exit": 137, "killed_after_grace": True}) in r.log.lines
    return r


def unkillable_ollama_is_reported_once() -> Rig:
    r = rig()
    r.ready()
    r.sup.on_signal(TERM)
    r.tick(1.0)
    r.tick(1.0 + GRACE)
    r.tick(1.0 + GRACE + 5.0)
    r.tick(1.0 + GRACE + 50.0)
    assert r.log.events().count("ollama_unkillable") == 1
    assert r.sup.state is State.STOPPING
    return r


def term_during_backoff_stops_at_once() -> Rig:
    r = rig(backoff=5.0)
    r.ready()
    exits(r.ollama, 1)
    r.tick(1.0)
    r.sup.on_signal(TERM)
    r.tick(1.1)
    r.tick(10.0)
    assert r.sup.state is State.STOPPED and r.sup.exit_status == Exit.OK
    assert len(r.system.spawned) == 1
    return r


def second_term_changes_nothing() -> Rig:
    r = rig()
    r.ready()
    r.sup.on_signal(TERM)
    r.tick(1.0)
    r.sup.on_signal(TERM)
    r.tick(2.0)
    assert r.system.signals.count((r.ollama.pid, TERM)) == 1
    assert r.sup.state is State.STOPPING
    return r


def policy_fail_exits_4() -> Rig:
    r = rig()
    r.ready()
    r.policy.directives.append(Fail(4))
    r.tick(1.0)
    assert r.sup.state is State.STOPPING
    exits(r.ollama, signum=TERM)
    r.tick(1.1)
    assert r.sup.exit_status == 4
    return r


# --- restarts ---------------------------------------------------------------------------------------------------


def restart_now_spawns_when_the_old_one_is_gone() -> Rig:
    r = rig()
    r.ready()
    old = r.ollama
    r.policy.directives.append(RestartWith(NEW_PLAN, "remedy for stub_library", immediately=True))
    r.tick(1.0)
    assert r.sup.state is State.RESTARTING
    assert (old.pid, TERM) in r.system.signals
    assert len(r.system.spawned) == 1  # never a second Ollama while the first holds the port
    exits(old, signum=TERM)  # exit during restart
    r.tick(1.2)
    assert r.sup.state is State.WAITING_READY
    assert r.system.plans == [PLAN, NEW_PLAN] and r.sup.restarts == 1
    assert [e.data["reason"] for e in r.events if e.kind == "restarted"] == ["remedy for stub_library"]
    return r


def restart_grace_over_kills_then_starts() -> Rig:
    r = rig()
    r.ready()
    old = r.ollama
    r.policy.directives.append(RestartWith(NEW_PLAN, "x", immediately=True))
    r.tick(1.0)
    r.tick(1.0 + GRACE)
    assert (old.pid, KILL) in r.system.group_kills
    exits(old, signum=KILL)
    r.tick(1.0 + GRACE + 0.01)
    assert len(r.system.spawned) == 2
    return r


def restart_waits_until_no_model_is_loaded() -> Rig:
    watcher = FakeWatcher()
    watcher.model_runner = True
    r = rig(watcher=watcher)
    r.ready()
    r.policy.directives.append(RestartWith(NEW_PLAN, "idle remedy", immediately=False))
    r.tick(1.0)
    r.tick(3.0)
    assert r.sup.state is State.RUNNING and "restart_deferred" in r.log.events()
    watcher.model_runner = False
    r.tick(4.0)  # the next scan sees the runner gone
    assert r.sup.state is State.RESTARTING
    return r


def term_during_restart_starts_no_new_ollama() -> Rig:
    r = rig()
    r.ready()
    old = r.ollama
    r.policy.directives.append(RestartWith(NEW_PLAN, "x", immediately=True))
    r.tick(1.0)
    r.sup.on_signal(TERM)
    r.tick(2.0)
    assert r.sup.state is State.STOPPING
    exits(old, 0)
    r.tick(2.5)
    assert r.sup.state is State.STOPPED and r.sup.exit_status == Exit.OK
    assert len(r.system.spawned) == 1
    return r


def term_during_restart_keeps_the_restarts_deadline() -> Rig:
    r = rig()
    r.ready()
    r.policy.directives.append(RestartWith(NEW_PLAN, "x", immediately=True))
    r.tick(1.0)
    r.sup.on_signal(TERM)
    r.tick(2.0)
    r.tick(1.0 + GRACE)  # the restart's TERM went out at 1.0: KILL at 1.0 + grace, not 2.0 + grace
    assert r.system.group_kills == [(r.ollama.pid, KILL)]
    return r


def hup_during_restart_restarts_once_with_the_new_plan() -> Rig:
    r = rig(reload=lambda: NEW_PLAN)
    r.ready()
    old = r.ollama
    r.policy.directives.append(RestartWith(PLAN, "x", immediately=True))
    r.tick(1.0)
    r.sup.on_signal(signal.SIGHUP)
    r.tick(1.1)
    r.system.run_job()
    r.tick(1.2)
    assert r.sup.state is State.RESTARTING and r.sup.plan is NEW_PLAN
    exits(old, 0)
    r.tick(1.3)
    assert r.system.plans == [PLAN, NEW_PLAN]
    assert len(r.system.spawned) == 2
    return r


# --- reload -----------------------------------------------------------------------------------------------------


def hup_prepares_in_the_worker_then_restarts() -> Rig:
    r = rig(reload=lambda: NEW_PLAN)
    r.ready()
    r.sup.on_signal(signal.SIGHUP)
    r.tick(1.0)
    assert len(r.system.jobs) == 1 and r.sup.state is State.RUNNING  # the loop goes on while prepare() runs
    r.tick(1.5)
    r.system.run_job()
    r.tick(2.0)
    assert r.sup.state is State.RESTARTING and r.sup.plan is NEW_PLAN
    return r


def ollama_dies_during_the_reload_subprocess() -> Rig:
    """The lost exit: the reload worker's registry.run reaped Ollama, so the loop's own reap returned nothing."""
    r = rig(reload=lambda: NEW_PLAN, backoff=1.0)
    r.ready()
    r.sup.on_signal(signal.SIGHUP)
    r.tick(1.0)
    exits(r.ollama, 2)  # reaped by the worker, not by the loop
    r.tick(1.1)
    assert r.sup.state is State.BACKOFF
    r.system.run_job()
    r.tick(1.2)
    assert r.sup.state is State.BACKOFF and r.sup.plan is NEW_PLAN
    r.tick(2.1)
    assert r.system.plans == [PLAN, NEW_PLAN]
    return r


def a_failed_reload_keeps_the_running_config() -> Rig:
    def bad() -> None:
        raise ValueError("OGPU_MODE: expected one of auto, advise, observe, off")

    r = rig(reload=bad)
    r.ready()
    r.sup.on_signal(signal.SIGHUP)
    r.tick(1.0)
    r.system.run_job()
    r.tick(1.1)
    assert r.sup.state is State.RUNNING and r.sup.plan is PLAN
    assert "reload_failed" in r.log.events()
    return r


def second_hup_while_preparing_prepares_again() -> Rig:
    plans = iter([PLAN, NEW_PLAN])
    r = rig(reload=lambda: next(plans))
    r.ready()
    r.sup.on_signal(signal.SIGHUP)
    r.tick(1.0)
    r.sup.on_signal(signal.SIGHUP)
    r.tick(1.1)
    assert len(r.system.jobs) == 1
    r.system.run_job()
    r.tick(1.2)
    assert len(r.system.jobs) == 1  # the second HUP's turn
    return r


def forwarded_signals_reach_ollama() -> Rig:
    r = rig()
    r.ready()
    r.sup.on_signal(signal.SIGUSR1)
    r.tick(1.0)
    assert (r.ollama.pid, signal.SIGUSR1) in r.system.signals
    return r


# --- watchdog ---------------------------------------------------------------------------------------------------


def watchdog_pings_at_half_the_interval() -> Rig:
    r = rig(watchdog=15.0)
    r.ready()
    pings = [f for f in r.notifier.sent if f == ("WATCHDOG=1",)]
    assert len(pings) == 1
    r.tick(14.9)
    assert r.notifier.sent.count(("WATCHDOG=1",)) == 1
    r.tick(15.0)
    r.tick(30.0)
    assert r.notifier.sent.count(("WATCHDOG=1",)) == 3
    assert r.sup.next_timeout(30.0) <= 15.0
    return r


SCENARIOS: list[Callable[[], Rig]] = [
    starting_to_running_when_answered, waits_for_the_gate, spawn_failure_exits_127,
    term_before_the_first_spawn_starts_nothing, foreign_port_owner_is_never_ready,
    answer_for_a_dead_ollama_is_ignored, discovery_time_remedy_restarts_before_ready, term_while_waiting_for_ready,
    clean_exit_before_ready, crash_backs_off_then_starts_again, crash_loop_gives_up_with_5,
    no_restarts_configured_passes_ollamas_code, clean_exit_stops_with_0, exit_while_waiting_for_ready_is_a_crash,
    leftovers_killed_but_never_our_helpers,
    term_stops_with_ollamas_code, grace_over_kills_the_group_exit_137, unkillable_ollama_is_reported_once,
    term_during_backoff_stops_at_once, second_term_changes_nothing, policy_fail_exits_4,
    restart_now_spawns_when_the_old_one_is_gone, restart_grace_over_kills_then_starts,
    restart_waits_until_no_model_is_loaded, term_during_restart_starts_no_new_ollama,
    term_during_restart_keeps_the_restarts_deadline, hup_during_restart_restarts_once_with_the_new_plan,
    hup_prepares_in_the_worker_then_restarts, ollama_dies_during_the_reload_subprocess,
    a_failed_reload_keeps_the_running_config, second_hup_while_preparing_prepares_again,
    forwarded_signals_reach_ollama, watchdog_pings_at_half_the_interval,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_scenario(scenario: Callable[[], Rig]) -> None:
    """Each scenario's own assertions (see its name)."""
    scenario()


def test_every_row_of_the_table_is_walked() -> None:
    """Together the scenarios take every transition of the table (a new row needs a scenario)."""
    walked = {(f, on, to) for scenario in SCENARIOS for f, on, to in scenario().transitions()}
    table = {(s.value, t.value, target.value) for (s, t), target in TRANSITIONS.items()}
    assert table - walked == set()


def test_a_trigger_without_a_row_raises() -> None:
    """Our own bug is loud: a trigger that makes no sense in a state is not silently ignored."""
    with pytest.raises(IllegalTransition):
        next_state(State.STOPPED, Trigger.SPAWNED)
    assert next_state(State.RESTARTING, Trigger.STOP) is State.STOPPING
