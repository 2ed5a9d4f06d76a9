"""Input as operators have it: journalctl, docker, Windows, ANSI, CRLF, cut lines; and never raising on any bytes."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from launcher.evidence import judge
from launcher.log_input import MAX_LINE_BYTES, clean, iter_lines, split_lines
from launcher.ollama_logs import parse_chunks, parse_stream

LINE = 'time=2025-01-01T00:00:00.000Z level=INFO source=types.go:1 msg="inference compute" id=GPU-1 library=cuda'


class TestClean:
    def test_journalctl_prefix_is_removed_and_pid_kept(self) -> None:
        """`journalctl -u ollama` lines lose their date/host/ident prefix; the pid is kept."""
        assert clean(f"Jan 14 16:41:34 host ollama[16241]: {LINE}".encode()) == (LINE, 16241)

    def test_journalctl_in_another_locale(self) -> None:
        """A month name in any language still reads as a journal prefix."""
        assert clean(b"de des. 03 11:10:07 PC127 ollama[43993]: ggml_cuda_init: found 2 CUDA devices:")[0] == (
            "ggml_cuda_init: found 2 CUDA devices:")

    def test_journalctl_iso_prefix(self) -> None:
        """`journalctl -o short-iso` prefixes are removed too."""
        assert clean(f"2025-01-14T16:41:34+0100 host ollama[7]: {LINE}".encode())[0] == LINE

    def test_docker_compose_prefix(self) -> None:
        """`docker compose logs` service prefixes are removed."""
        assert clean(f"ollama-1  | {LINE}".encode())[0] == LINE

    def test_docker_timestamps_prefix(self) -> None:
        """`docker logs --timestamps` RFC3339 prefixes are removed."""
        assert clean(f"2025-01-14T16:41:34.123456789Z {LINE}".encode())[0] == LINE

    def test_llama_server_prefix(self) -> None:
        """llama-server's `0.00.178.962 I ` prefix is removed."""
        line = "ggml_cuda_init: found 1 CUDA devices"
        assert clean(b"0.00.178.962 I " + line.encode())[0] == line

    def test_ansi_crlf_and_control_bytes(self) -> None:
        """Colours, a Windows line end and stray control bytes go; the text stays."""
        text, _ = clean(b"\x1b[31m" + LINE.encode() + b"\x1b[0m\x00\r")
        assert text.strip() == LINE

    def test_gin_and_go_log_lines_are_left_alone(self) -> None:
        """Lines that merely contain `|` or a Go log date are not mistaken for prefixes."""
        gin = "[GIN] 2025/10/11 - 00:03:35 | 200 |  38.627ms |  127.0.0.1 | POST  \"/api/show\""
        assert clean(gin.encode())[0] == gin
        old = "2024/01/14 19:50:06 gpu.go:88: Detecting GPU type"
        assert clean(old.encode())[0] == old

    def test_invalid_utf8_is_replaced(self) -> None:
        """Bytes that are not UTF-8 never raise."""
        text, _ = clean(b"abc\xff\xfe def")
        assert text.startswith("abc") and text.endswith("def")


class TestSplit:
    def test_long_line_is_cut_and_the_rest_skipped(self) -> None:
        """A line longer than the limit is cut, flagged, and the next line is still read whole."""
        data = b"x" * (MAX_LINE_BYTES * 3) + b"\nnext\n"
        lines = list(split_lines([data[i : i + 1000] for i in range(0, len(data), 1000)]))
        assert len(lines) == 2
        assert lines[0] == (b"x" * MAX_LINE_BYTES, True)
        assert lines[1] == (b"next", False)

    def test_last_line_without_newline(self) -> None:
        """A file that does not end in a newline keeps its last line."""
        assert [t for _, t, *_ in iter_lines([b"a\nb"])] == ["a", "b"]

    def test_line_numbers_count_every_line(self) -> None:
        """Empty lines count, so evidence line numbers match the file."""
        assert [n for n, *_ in iter_lines([b"a\n\n\nb\n"])] == [1, 2, 3, 4]


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


SAMPLE = b"\n".join([
    b"Jan 14 16:41:34 h ollama[1]: " + LINE.encode(),
    b"ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected",
    b"load_backend: loaded CUDA backend from /usr/lib/ollama/cuda_v12/libggml-cuda.so\r",
    b"\x1b[33mload_tensors: offloaded 3/3 layers to GPU\x1b[0m",
    "load_tensors:        CUDA0 model buffer size =    18.69 MiB é".encode(),
])


class TestProperties:
    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=4096))
    def test_random_bytes_never_raise(self, data: bytes) -> None:
        """Any bytes at all parse and judge without an exception."""
        judge(parse_chunks([data]))

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.sampled_from([LINE, "offloaded 1/2 layers to GPU", "ggml_cuda_init: found 9 CUDA devices",
                                     'msg="', "msg=", "Device 0: x, compute capability 1", "CUDA error", "rip 0x1",
                                     "\x00\xff", "a" * 5000]), max_size=30),
           st.integers(min_value=0, max_value=200))
    def test_truncated_and_huge_lines_never_raise(self, parts: list[str], cut: int) -> None:
        """Known lines cut anywhere, glued together or made huge never raise."""
        text = "\n".join(p[: max(1, len(p) - cut)] for p in parts) * 2
        judge(parse_chunks([text.encode("utf-8", "surrogatepass")]))
        judge(parse_chunks([(LINE * 5000).encode()]))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
    def test_chunking_does_not_change_the_result(self, cuts: list[int]) -> None:
        """The same bytes in any chunking give the same events and the same verdict."""
        whole = list(parse_chunks([SAMPLE]))
        chunked = list(parse_chunks(_chunked(SAMPLE, cuts)))
        assert whole == chunked
        assert judge(whole) == judge(chunked)

    @settings(max_examples=50, deadline=None)
    @given(st.binary(max_size=2000), st.lists(st.integers(min_value=0, max_value=3000), max_size=10))
    def test_chunking_of_random_bytes_does_not_change_the_result(self, data: bytes, cuts: list[int]) -> None:
        """Chunk boundaries inside multi-byte characters or CRLF pairs change nothing."""
        assert list(parse_chunks([data])) == list(parse_chunks(_chunked(data, cuts)))

    def test_stream_reads_in_chunks(self) -> None:
        """A file object gives the same events as the bytes in one piece."""
        assert list(parse_stream(io.BytesIO(SAMPLE))) == list(parse_chunks([SAMPLE]))
