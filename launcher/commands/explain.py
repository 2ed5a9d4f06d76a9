"""`ollama-gpu explain [FILE|-] [--json]`: read an Ollama log, say where the model ran, why, and what to do."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

from launcher.evidence import Board, Verdict
from launcher.exitcodes import VerdictExit, verdict_exit
from launcher.log_input import read_chunks
from launcher.memory_account import MemoryAccount
from launcher.memory_report import MemoryTee, relevant, render, report
from launcher.ollama_logs import parse_chunks, parse_stream
from launcher.remedy_text import advice

HELP = "explain an Ollama server log: GPU or CPU, why, the evidence lines and what to do"
MAX_EVIDENCE = 8


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `explain`."""
    parser.add_argument("file", nargs="?", default="-",
                        help="the log (journalctl, docker logs, server.log, raw output); '-' or nothing reads stdin")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _open(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    return open(path, "rb")


def explain_board(stream: IO[bytes]) -> Board:
    """The board fed with one log stream."""
    board = Board()
    for event in parse_stream(stream):
        board.add(event)
    return board


def explain_stream(stream: IO[bytes]) -> Verdict:
    """The verdict of one log stream (parse, feed the board, judge)."""
    return explain_board(stream).verdict()


def explain_with_memory(stream: IO[bytes]) -> tuple[Board, list[MemoryAccount]]:
    """The fed board and, read in the same pass, the memory account of each model load (issue 17)."""
    board = Board()
    tee = MemoryTee()
    for event in parse_chunks(read_chunks(stream), tee):
        board.add(event)
    verdict = board.verdict()
    return board, relevant(tee.accounts(), verdict.outcome, verdict.cause)


def render_text(verdict: Verdict, name: str, memory: Sequence[MemoryAccount] = (),
                settings: Mapping[str, str] | None = None) -> str:
    """The verdict as an operator reads it."""
    out = [f"{name}: {verdict.outcome} (cause: {verdict.cause})"]
    gen = verdict.generation or "unknown"
    out.append(f"ollama: {verdict.version or 'version not in the log'}, generation {gen}")
    if verdict.evidence:
        out.append("evidence:")
        for ev in verdict.evidence[:MAX_EVIDENCE]:
            where = f"line {ev.line}" if ev.line is not None else ev.source
            out.append(f"  {where}: {ev.says}")
            if ev.text:
                out.append(f"      {ev.text[:160]}")
    else:
        out.append("evidence: none")
    out.extend(f"note: {n}" for n in verdict.notes)
    out.extend(f"also: {x}" for x in verdict.findings[:10])
    out.extend(render(list(memory)))
    out.append(f"what to do: {advice(verdict.outcome, verdict.cause, settings)}")
    return "\n".join(out) + "\n"


def render_json(verdict: Verdict, name: str, memory: Sequence[MemoryAccount] = (),
                settings: Mapping[str, str] | None = None) -> str:
    """The verdict as one JSON object."""
    data: dict[str, Any] = {"input": name, **verdict.to_dict(),
                            "advice": advice(verdict.outcome, verdict.cause, settings),
                            "exit_code": verdict_exit(verdict.outcome), "memory": [report(a) for a in memory]}
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def _fail(args: argparse.Namespace, name: str, reason: str) -> int:
    if args.json:
        sys.stdout.write(json.dumps({"input": name, "error": reason, "exit_code": int(VerdictExit.UNREADABLE)}) + "\n")
    else:
        sys.stderr.write(f"ollama-gpu explain: cannot read {name}: {reason}\n")
    return int(VerdictExit.UNREADABLE)


def run(args: argparse.Namespace, ctx: object) -> int:
    """Explain the log; exit 0 gpu/cpu_expected, 1 cpu_fallback/partial_offload/crash, 2 unreadable, 3 unknown."""
    name = "stdin" if args.file == "-" else str(args.file)
    try:
        stream = _open(args.file)
    except OSError as exc:
        return _fail(args, name, exc.strerror or str(exc))
    try:
        with stream if args.file != "-" else contextlib.nullcontext(stream):
            board, memory = explain_with_memory(stream)
    except OSError as exc:  # a directory, an I/O error mid-read
        return _fail(args, name, exc.strerror or str(exc))
    verdict = board.verdict()
    settings = board.facts.env  # the `server config` line's settings: advice never asks for what is set
    sys.stdout.write(render_json(verdict, name, memory, settings) if args.json
                     else render_text(verdict, name, memory, settings))
    return verdict_exit(verdict.outcome)

