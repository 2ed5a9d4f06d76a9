"""Paste-proof input, case by case: each format `explain` accepts, read back to the records Ollama printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.log_input import clean, split_lines, strip_prefixes
from launcher.memory_lines import RELEVANT_BYTES
from launcher.ollama_logs import QUIET_BYTES, parse_chunks, parse_text
from launcher.paste import Joiner, split_glued, strip_markdown

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
T = "time=2025-01-14T16:41:34.123Z level=INFO source=types.go:130 "
SLOG = (f'{T}msg="inference compute" id=GPU-d6d498ce-8dc3-cf77-af3c-ad6db192314e library=cuda variant=v12 '
        'compute=7.5 driver=13.0 name="Quadro RTX 5000" total="15.6 GiB" available="15.4 GiB"')
GGML = "ggml_cuda_init: found 1 CUDA devices:"
DEVICE = "  Device 0: NVIDIA GeForce RTX 4090, compute capability 8.9, VMM: yes"
OFFLOAD = "load_tensors: offloaded 33/33 layers to GPU"
RECORDS = [SLOG, GGML, DEVICE, OFFLOAD]


def records(text: str | bytes, skip: tuple[bytes, ...] = ()) -> list[tuple[int, str, int | None, bool]]:
    data = text.encode() if isinstance(text, str) else text
    return list(Joiner(skip).records(split_lines([data])))


def texts(text: str | bytes) -> list[str]:
    return [r[1] for r in records(text)]


def kinds(text: str) -> list[str]:
    return [e.kind for e in parse_text(text) if e.kind != "parse_summary"]


class TestPrefixes:
    @pytest.mark.parametrize("prefix", [
        "Jan 14 16:41:34 gpu-host ollama[16241]: ",  # journalctl (short)
        "2025-01-14T16:41:34+0100 gpu-host ollama[16241]: ",  # -o short-iso
        "2025-01-14T16:41:34+01:00 gpu-host ollama[16241]: ",  # -o short-iso, newer systemd
        "Jan 14 16:41:34.123456 gpu-host ollama[16241]: ",  # -o short-precise
        "2025-01-14T16:41:34.123456+01:00 gpu-host ollama[16241]: ",  # -o short-iso-precise
        "Tue 2025-01-14 16:41:34 CET gpu-host ollama[16241]: ",  # -o short-full
        "1736869294.123456 gpu-host ollama[16241]: ",  # -o short-unix
        "[ 1234.567890] gpu-host ollama[16241]: ",  # -o short-monotonic
    ])
    def test_journald_formats_lose_their_prefix_and_keep_the_pid(self, prefix: str) -> None:
        """Every `journalctl -o short*` shape is read through; the pid comes from `ident[pid]`."""
        got = records("\n".join(prefix + r for r in RECORDS))
        assert [r[1] for r in got] == RECORDS
        assert {r[2] for r in got} == {16241}

    @pytest.mark.parametrize("prefix", [
        "ollama-1  | ",  # docker compose v2
        "ollama_1  | ",  # docker-compose v1
        "2025-01-14T16:41:34.123456789Z ",  # docker logs --timestamps (RFC3339Nano)
        "ollama-1  | 2025-01-14T16:41:34.123456789Z ",  # compose --timestamps
        "[pod/ollama-7c9d8b5f4-x2x9z/ollama] ",  # kubectl logs --prefix
        "[pod/ollama-0/ollama] 2025-01-14T16:41:34.123456789Z ",  # kubectl --prefix --timestamps
    ])
    def test_container_prefixes_are_removed_however_stacked(self, prefix: str) -> None:
        """docker, compose and kubectl prefixes, with or without timestamps, leave Ollama's own text."""
        assert texts("\n".join(prefix + r for r in RECORDS)) == RECORDS

    def test_journald_cat_is_the_plain_log(self) -> None:
        """`journalctl -o cat` has no prefix: the records are read as they are."""
        assert texts("\n".join(RECORDS)) == RECORDS

    def test_serve_reads_stacked_prefixes_too(self) -> None:
        """`clean` (serve's per-line reader) removes a compose prefix and the timestamp after it."""
        assert clean(f"ollama-1  | 2025-01-14T16:41:34.123456789Z {GGML}".encode()) == (GGML, None)

    def test_text_without_a_prefix_is_unchanged(self) -> None:
        """GIN lines, Go log dates and pipes inside a record are not prefixes."""
        for text in ['[GIN] 2025/10/11 - 00:03:35 | 200 |  38.627ms |  127.0.0.1 | POST  "/api/show"',
                     "2024/01/14 19:50:06 gpu.go:88: Detecting GPU type",
                     "system_info: n_threads = 16 | CUDA : ARCHS = 900 | USE_GRAPHS = 1 | ",
                     "slot get_availabl: id  0 | task -1 | selected slot by LRU, t_last = -1"]:
            assert strip_prefixes(text) == (text, None)


class TestJournalJson:
    def _line(self, message: object, pid: str = "16241") -> str:
        return json.dumps({"__CURSOR": "s=1;i=2", "__REALTIME_TIMESTAMP": "1736869294000000", "_PID": pid,
                           "SYSLOG_IDENTIFIER": "ollama", "MESSAGE": message})

    def test_message_string(self) -> None:
        """`journalctl -o json`: one object a line, the record is MESSAGE and the pid `_PID`."""
        got = records("\n".join(self._line(r) for r in RECORDS))
        assert [r[1] for r in got] == RECORDS
        assert {r[2] for r in got} == {16241}

    def test_message_as_byte_array_with_colours(self) -> None:
        """journald stores a message with control bytes as an array of bytes; colours are removed."""
        raw = list(b"\x1b[33m" + OFFLOAD.encode() + b"\x1b[0m")
        assert texts(self._line(raw)) == [OFFLOAD]
        assert "offload" in kinds(self._line(raw))

    def test_null_or_odd_message_passes_through(self) -> None:
        """MESSAGE null (over journald's size limit) or an object that is no journal entry is left as it is."""
        line = self._line(None)
        assert texts(line) == [line]
        other = '{"MESSAGE": 5}'
        assert texts(other) == [other]

    def test_hostile_json_passes_through(self) -> None:
        """Deeply nested or broken JSON that mentions MESSAGE is text like any other, never an exception."""
        deep = '{"MESSAGE":' + "[" * 10_000  # deeper than the decoder recurses, shorter than the line limit
        broken = '{"MESSAGE": "x", "_PID": "12'
        assert texts(f"{deep}\n{broken}") == [deep, broken]

    def test_llama_server_json_is_not_journald(self) -> None:
        """The old runner's own JSON lines (lower-case keys) are not unwrapped."""
        line = '{"timestamp":1701246123,"level":"INFO","function":"main","line":2534,"message":"build info"}'
        assert texts(line) == [line]


class TestWindows:
    def test_crlf_and_backslash_paths(self) -> None:
        """server.log from Windows: CRLF line ends go, `\\\\` paths stay for the rows that read them."""
        line = (r'time=2024-06-17T14:49:12.220+02:00 level=WARN source=amd_windows.go:95 msg="amdgpu is not '
                r'supported" gpu=0 gpu_type=gfx90c:xnack- library="C:\\Program Files\\AMD\\ROCm\\5.7\\bin\\"')
        got = texts((line + "\r\n" + GGML + "\r\n").encode())
        assert got[:2] == [line, GGML]

    def test_escaped_backslash_before_a_quote_closes_it(self) -> None:
        """`\\\\"` ends a quoted value (an escaped backslash, then the quote): the record is complete."""
        line = f'{T}msg="x" path="C:\\\\ollama\\\\"'
        log = f"{SLOG}\n{line}\nsome text with a = sign\n"  # SLOG is the widest line: no width rule here
        assert texts(log) == [SLOG, line, "some text with a = sign"]


class TestColours:
    def test_ansi_colours_and_control_bytes_go(self) -> None:
        """Colour codes and stray control bytes are removed; the text stays."""
        assert texts(b"\x1b[31m" + OFFLOAD.encode() + b"\x1b[0m\x00") == [OFFLOAD + " "]


class TestWrapped:
    def test_terminal_wrap_is_rejoined_exactly(self) -> None:
        """Lines wrapped at a terminal's width come back as the records they were, character for character."""
        width = 80
        long = [SLOG, GGML, DEVICE, OFFLOAD, SLOG.replace("Quadro", "Tesla")]
        wrapped = [x[i : i + width] for x in long for i in range(0, len(x), width)]
        got = records("\n".join(wrapped))
        assert [r[1] for r in got] == long
        assert [r[0] for r in got] == [1, 4, 5, 6, 7]  # each record is numbered by its first physical line

    def test_open_quote_continues_on_the_next_line(self) -> None:
        """A slog line whose quoted value is not closed goes on in the next line, whatever its width; broken by
        hand at a space, it gets the space back."""
        head, tail = SLOG.split(" compute", 1)
        assert head.count('"') % 2 == 1
        assert texts(f"{head}\ncompute{tail}\n{GGML}") == [SLOG, GGML]
        assert texts(f"{head} \ncompute{tail}\n{GGML}") == [SLOG, GGML]  # `fold -s` keeps the space

    def test_hand_broken_slog_record_gets_its_space_back(self) -> None:
        """A record broken by hand at a space (shorter than the paste's widest line) is joined with that space."""
        first, rest = SLOG.split(" name=", 1)
        log = f"{first}\nname={rest}\n{SLOG}"
        assert texts(log)[0] == SLOG
        found = [e.data for e in parse_text(log) if e.kind == "gpu_discovered"]
        assert [(d["line"], d["name"], d["available"]) for d in found] == [(1, "Quadro RTX 5000", "15.4 GiB"),
                                                                           (3, "Quadro RTX 5000", "15.4 GiB")]

    def test_wrapped_evidence_is_found(self) -> None:
        """The point of it: a journalctl line wrapped by the terminal still says how many layers went to the GPU."""
        width = 60
        log = [f"Jan 14 16:41:34 gpu-host ollama[16241]: {r}" for r in [SLOG, GGML, DEVICE, OFFLOAD]]
        wrapped = [x[i : i + width] for x in log for i in range(0, len(x), width)]
        assert OFFLOAD not in "\n".join(wrapped)
        assert kinds("\n".join(wrapped)) == kinds("\n".join(log))
        assert "offload" in kinds("\n".join(log))

    def test_a_line_exactly_as_wide_followed_by_a_record_is_not_joined(self) -> None:
        """A record that happens to end at the terminal width is followed by a record start: no join."""
        width = 70
        wide = f"{T}msg=" + "a" * (width - len(T) - 4)
        assert len(wide) == width
        lines = [wide, wide, f"{T}msg=short", GGML, wide, f"Jan 14 16:41:34 h ollama[7]: {OFFLOAD}"]
        assert texts("\n".join(lines)) == [*lines[:5], OFFLOAD]

    def test_real_next_records_after_a_slog_line_are_not_taken_for_tails(self) -> None:
        """Runner output that follows a slog line (errors, stderr, old runners) stays its own record."""
        for nxt in ["cuInit err: 500", "ERROR: ld.so: object '/x.so' from LD_PRELOAD cannot be preloaded",
                    "[1706635646] system info: AVX = 1 | AVX2 = 0", "loading library /tmp/o/cuda_v12/libext_server.so",
                    'source=ggml.go:498 msg="offloaded 25/25 layers to GPU"', GGML, DEVICE,
                    "0.00.006.542 E load_backend: failed to load /x/libggml-cuda.so", "goroutine 1 [running]:",
                    "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=ollama, GPU has fallen off the bus."]:
            assert texts(f"{SLOG}\n{nxt}") == [SLOG, strip_prefixes(nxt)[0]], nxt

    def test_no_row_sample_is_taken_for_a_tail(self) -> None:
        """Every line a pattern row reads (tests/test_ollama_logs_rows.py) stays its own record after a version
        line, a long slog line or a GGML line: the joiner never hides evidence inside the record before it."""
        from tests.test_ollama_logs_rows import SAMPLES

        for version_line, line, _, _ in SAMPLES:
            for before in (version_line, SLOG, GGML):
                got = texts(f"{before}\n{line}")
                assert len(got) == 2 and got[-1] == strip_prefixes(line)[0], (before, line)

    def test_runaway_quote_stops_joining(self) -> None:
        """An unclosed quote joins a bounded number of lines, then records flow again."""
        lines = [f'{T}msg="never closed'] + [f"tail {i} =" for i in range(300)]
        got = records("\n".join(lines))
        assert len(got) > 1
        assert sum(len(r[1]) for r in got) >= sum(len(x) for x in lines)  # nothing lost

    def test_skipped_lines_take_their_tails_with_them(self) -> None:
        """A skipped (evidence-free) line that was wrapped does not leave its tail behind as a record."""
        width = 64
        gin = '[GIN] 2025/10/11 - 00:03:35 | 200 |  38.627ms |  127.0.0.1 | POST  "/api/show"' * 2
        lines = [gin[i : i + width] for i in range(0, len(gin), width)] + [GGML]
        joiner = Joiner((b"[GIN]",))
        got = list(joiner.records(split_lines(["\n".join(lines).encode()])))
        assert [r[1] for r in got] == [GGML]
        assert joiner.lines == len(lines)

    def test_a_quoted_value_wrapped_before_a_function_head_goes_on(self) -> None:
        """`server config`'s env, wrapped at the confirmed width just before `https_proxy: no_proxy:]"`: the quote is
        still open at the width, so the tail joins even though it looks like a GGML function head."""
        head = f'{T}msg="server config" env="map[CUDA_VISIBLE_DEVICES: OLLAMA_GPU_OVERHEAD:0 '
        config = head + 'https_proxy: no_proxy:]"'
        width = len(head)
        lines = [config[:width], config[width:]] + [SLOG[i : i + width] for i in range(0, len(SLOG), width)] + [GGML]
        assert sum(len(x) == width for x in lines) >= 2  # a confirmed width
        assert texts("\n".join(lines)) == [config, SLOG, GGML]

    def test_a_single_wrap_inside_a_size_is_rejoined(self) -> None:
        """The one line a paste wrapped (no width to confirm) broke inside a size (`400.0` / `0 MiB`, `400.00` /
        ` MiB`, `400.00 M` / `iB`): no record starts there, so the tail joins it."""
        kv = ("llama_kv_cache: size =  800.00 MiB (  4096 cells,  40 layers,  1/1 seqs), K (f16):  400.00 MiB, "
              "V (f16):  400.00 MiB")
        for cut in range(len(kv) - 8, len(kv)):
            assert texts("\n".join([GGML, kv[:cut], kv[cut:], OFFLOAD])) == [GGML, kv, OFFLOAD], kv[cut:]

    def test_a_prefixed_wrap_right_before_time_is_joined(self) -> None:
        """journalctl output wrapped by the terminal right after the prefix: the next line starts with `time=` but
        lacks the prefix, and the line before is as wide as the terminal, so it is that record's tail."""
        prefix = "Jan 14 16:41:34 gpu-host-17.cluster.example.org ollama[16241]: "
        log = [prefix + SLOG, prefix + OFFLOAD, prefix + SLOG]
        width = len(prefix)
        wrapped = [x[i : i + width] for x in log for i in range(0, len(x), width)]
        assert wrapped[0] == prefix and wrapped[1].startswith("time=")
        got = records("\n".join(wrapped))
        assert [(r[1], r[2]) for r in got] == [(SLOG, 16241), (OFFLOAD, 16241), (SLOG, 16241)]
        assert got[0][0] == 1

    def test_a_wrap_right_after_a_gt_is_not_a_chop_mark(self) -> None:
        """A line wrapped right after a `>` (`80524 >` / `= 1024 MiB`) in a paste whose other lines at the width end
        otherwise is a wrap: the tail joins and the `>` stays (`less -S` marks every line it chops)."""
        fit = ("llama_params_fit_impl: after the projected use of device memory, will leave 80524 >= 1024 MiB of free "
               "device memory")
        width = fit.index(">") + 1
        lines = [fit[:width], fit[width:]] + [SLOG[i : i + width] for i in range(0, len(SLOG), width)] + [GGML]
        assert texts("\n".join(lines)) == [fit, SLOG, GGML]


class TestTap:
    """A reader beside the parser (the memory account) gets the quiet records it asks for, rejoined, in order."""

    QUIET = ("common_memory_breakdown_print: |   - CUDA0 (NVIDIA H100 80GB HBM3) | 81079 = 80524 + (  554 =    0 +"
             "     0 +     554) +           0 |")
    GIN = '[GIN] 2025/10/11 - 00:03:35 | 200 |  38.627ms |  127.0.0.1 | POST  "/api/show" and more padding here'

    def _read(self, log: list[str], width: int) -> tuple[list[tuple[str, int, str]], list[tuple[int, str]]]:
        wrapped = [x[i : i + width] for x in log for i in range(0, len(x), width)]
        seen: list[tuple[str, int, str]] = []
        joiner = Joiner(QUIET_BYTES, RELEVANT_BYTES, lambda n, t: seen.append(("tap", n, t)))
        for number, text, _pid, _cut in joiner.records(split_lines(["\n".join(wrapped).encode()])):
            seen.append(("record", number, text))
        plain = [(r[0], r[1]) for r in Joiner(QUIET_BYTES).records(split_lines(["\n".join(wrapped).encode()]))]
        return seen, plain

    def test_wrapped_quiet_lines_come_rejoined_in_their_place(self) -> None:
        """The quiet line comes whole to the tap, numbered by its first physical line, between the records around
        it; the records themselves are those a joiner without a tap yields."""
        seen, plain = self._read([SLOG, self.QUIET, "print_info: n_layer          = 36", OFFLOAD], 60)
        assert seen == [("record", 1, SLOG), ("tap", 5, self.QUIET), ("tap", 8, "print_info: n_layer          = 36"),
                        ("record", 9, OFFLOAD)]  # (SLOG is 4 lines at 60 columns, QUIET 3)
        assert [(n, t) for kind, n, t in seen if kind == "record"] == plain

    def test_quiet_lines_the_tap_does_not_want_stay_unread(self) -> None:
        """A quiet line without the tap's keywords (HTTP lines: most of a log) is never decoded nor handed over,
        nor is its wrapped tail."""
        seen, plain = self._read([SLOG, self.GIN, OFFLOAD], 60)
        assert seen == [("record", 1, SLOG), ("record", 7, OFFLOAD)]
        assert plain == [(1, SLOG), (7, OFFLOAD)]

    def test_the_last_record_reaches_the_tap(self) -> None:
        """A quiet record at the end of the input is handed over when the input ends."""
        seen, _ = self._read([SLOG, self.QUIET], 60)
        assert seen[-1] == ("tap", 5, self.QUIET)

    def test_parse_chunks_feeds_the_tap_what_it_reads(self) -> None:
        """`parse_chunks` with a tap: every record the parser reads plus the quiet ones, in log order; the events
        are the same as without the tap."""
        data = "\n".join([SLOG, self.QUIET, self.GIN, OFFLOAD]).encode()

        class Tap:
            quiet = RELEVANT_BYTES

            def __init__(self) -> None:
                self.fed: list[tuple[int, str]] = []

            def feed(self, number: int, text: str) -> None:
                self.fed.append((number, text))

        tap = Tap()
        assert list(parse_chunks([data], tap)) == list(parse_chunks([data]))
        assert tap.fed == [(1, SLOG), (2, self.QUIET), (4, OFFLOAD)]


class TestGlued:
    def test_slog_records_glued_on_one_line_are_split(self) -> None:
        """Several records on one line (a paste that lost its newlines) are cut at each `time=YYYY-`."""
        a, b = f'{T}msg="a"', f'{T}msg="b" x=1'
        assert split_glued(a + b) == [a, b]
        assert split_glued(a + " " + b + "  " + a) == [a, b, a]

    def test_gin_and_journald_starts_split_too(self) -> None:
        """A `[GIN]` line or a journald prefix in the middle of a line starts a record there."""
        gin = '[GIN] 2025/10/11 - 00:03:35 | 200 |  38.627ms |  127.0.0.1 | POST  "/api/show"'
        assert split_glued(f'{T}msg="a" {gin}') == [f'{T}msg="a"', gin]
        got = records(f"Jan 14 16:41:34 h ollama[7]: {T}msg=a Jan 14 16:41:35 h ollama[9]: {OFFLOAD}")
        assert [(r[1], r[2]) for r in got] == [(f"{T}msg=a", 7), (OFFLOAD, 9)]

    def test_go_log_lines_glued(self) -> None:
        """Old (0.1.x) Go log lines glued together are split at the next date."""
        a = "2024/01/14 19:50:06 gpu.go:94: Nvidia GPU detected"
        b = "2024/01/14 19:50:06 gpu.go:138: CUDA GPU is too old. Falling back to CPU mode."
        assert split_glued(a + b) == [a, b]

    def test_time_inside_a_value_is_not_a_start(self) -> None:
        """`start_time=` or a `time=` that is no slog head is left inside its record."""
        line = f"{T}msg=x start_time=2025-01-14T16:41:34Z other.time=2025-01-14T16:41:34Z level=INFO"
        assert split_glued(line) == [line]


class TestMarkdown:
    @pytest.mark.parametrize(("pasted", "meant"), [
        ("```", ""), ("```log", ""), ("~~~", ""),
        (f"> {GGML}", GGML), (f">{GGML}", GGML), (f"> > {GGML}", GGML),
        (f"**{GGML}**", GGML), (f"`{GGML}`", GGML), (f"- `{GGML}`", GGML), (f"* {OFFLOAD}", OFFLOAD),
        (f"1. {SLOG}", SLOG), (f"> **{OFFLOAD}**", OFFLOAD), (f"{T}msg=x **library=cpu**", f"{T}msg=x library=cpu"),
    ])
    def test_remnants_are_removed(self, pasted: str, meant: str) -> None:
        """Fences, quote markers, bullets, bold and inline code around a record go; the record stays."""
        assert strip_markdown(pasted) == meant

    @pytest.mark.parametrize("text", [
        'msg="gpu library search" globs="[/usr/local/nvidia/lib/libcuda.so** /usr/lib*/libcuda.so**]"',
        "llama_model_loader: - kv   0: general.architecture str = llama",
        ">= 1024 MiB of free device memory",
        "  - CUDA0 (H100 80GB HBM3) | 81079 = 80552 + (  27 =    18 +       2 +       6) +         499 |",
        "x ** y",
    ])
    def test_log_text_that_looks_like_markdown_is_kept(self, text: str) -> None:
        """Globs with `**`, list-like GGML lines and a leading `>` that no record follows are log text."""
        assert strip_markdown(text) == text

    def test_a_quoted_paste_loses_every_marker(self) -> None:
        """When most lines start with `>`, the paste is a quote: each line loses its marker."""
        assert texts("\n".join(f"> {r}" for r in [*RECORDS, "plain words"])) == [*RECORDS, "plain words"]

    def test_fences_keep_line_numbers(self) -> None:
        """A fence line becomes an empty record, so evidence line numbers still match the pasted text."""
        got = records(f"```\n{GGML}\n```\n{OFFLOAD}")
        assert [(r[0], r[1]) for r in got] == [(1, ""), (2, GGML), (3, ""), (4, OFFLOAD)]


class TestTruncation:
    def test_systemd_ellipsis_is_removed_and_marked(self) -> None:
        """`systemctl status` ellipsizes long lines with `…`: the mark goes and the record says it was cut."""
        got = records(f"Jan 14 16:41:34 h ollama[7]: {OFFLOAD[:30]}\u2026")
        assert got == [(1, OFFLOAD[:30], 7, True)]

    def test_less_chop_marker_is_removed_and_marked(self) -> None:
        """journalctl's pager (`less -S`) marks chopped lines with `>` in the last column."""
        width = 72
        lines = [(f"Jan 14 16:41:34 h ollama[7]: {SLOG}")[: width - 1] + ">" for _ in range(3)] + [GGML]
        got = records("\n".join(lines))
        assert len(got) == 4
        assert all(r[3] and not r[1].endswith(">") for r in got[:3])
        assert got[3] == (4, GGML, None, False)

    def test_a_real_trailing_gt_is_kept(self) -> None:
        """A record that ends in `>` (a chat template) is not taken for a chop mark when no width was learned."""
        assert texts("srv init: example_format: '<|im_start|>") == ["srv init: example_format: '<|im_start|>"]


class TestNothingLost:
    def test_text_we_do_not_understand_passes_through(self) -> None:
        """Lines that are no log format pass through unchanged, one record each."""
        lines = ["hello", "nvidia-smi says:", "| NVIDIA-SMI 535.104.05   Driver Version: 535.104.05 |", "", "bye"]
        assert texts("\n".join(lines)) == lines

    def test_every_fixture_reads_as_its_lines(self) -> None:
        """On the real fixture logs, the joiner changes nothing but what is truly broken: all but two (records
        broken by hand, joined on purpose) give back exactly the cleaned physical lines."""
        logs = sorted([*FIXTURES.glob("ollama-logs/*/server.log"), *FIXTURES.glob("ollama-real-*/*.log"),
                       *FIXTURES.glob("ggml-real/*.log")])
        assert len(logs) > 50
        changed = []
        for path in logs:
            data = path.read_bytes()
            plain = [(n, clean(raw)[0]) for n, (raw, _) in enumerate(split_lines([data]), 1)
                     if not raw.startswith(QUIET_BYTES)]
            got = [(r[0], r[1]) for r in records(data, QUIET_BYTES)]
            if got != plain:
                changed.append(path.parent.name)
        assert sorted(changed) == ["cpu_expected-unsupported_igpu-0.32.5-haaddon-319",
                                   "cpu_expected-unsupported_igpu-unk-nomad-1056"]
