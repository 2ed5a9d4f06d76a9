"""Issue 17: the memory account of each partial load matches the log's figures, and the fit arithmetic is the
release line's own (checked by hand against printed figures)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from launcher.commands.explain import explain_with_memory, render_json, render_text
from launcher.fit_advice import (
    Change,
    EstimateFit,
    LayoutFit,
    LlamaServerFit,
    advise,
    fit_model,
    kv_bytes_per_token,
    kv_per_token,
    summary,
)
from launcher.memory_account import MemoryAccount, accounts_of_text, attach_holders
from launcher.memory_lines import parse_size, parse_sizes, scan_line, slog_fields
from launcher.memory_report import render
from tests.memory_logs import C_PARTIAL, D_PARTIAL

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
PARTIAL = sorted((FIXTURES / "ollama-logs").glob("partial_offload-*"))
GIB, MIB = 1 << 30, 1 << 20


def account(name: str) -> MemoryAccount:
    (acc,) = [a for a in accounts_of_text((FIXTURES / "ollama-logs" / name / "server.log").read_bytes()) if a.partial
              or a.release_line is not None]
    return acc


def d_partial() -> MemoryAccount:
    (acc,) = accounts_of_text(D_PARTIAL)
    return acc


class TestSizes:
    def test_humanbytes2_sizes_and_lists(self) -> None:
        """Ollama's HumanBytes2 strings, single and in slog lists, become bytes; anything else is None."""
        assert parse_size('"23.6 GiB"') == int(23.6 * GIB)
        assert parse_size("512.0 MiB") == 512 * MIB
        assert parse_size("0 B") == 0
        assert parse_size("lots") is None
        assert parse_sizes('"[22.0 GiB 22.0 GiB]"') == [22 * GIB, 22 * GIB]
        assert parse_sizes("[22.0 GiB 22.0]") is None

    def test_slog_fields_keep_quoted_values(self) -> None:
        """Dotted keys and quoted values with spaces are read as the slog handler wrote them."""
        f = slog_fields('msg=offload layers.split="" memory.available="[11.1 GiB]" memory.required.kv="992.0 MiB"')
        assert f["layers.split"] == "" and f["memory.available"] == "[11.1 GiB]"
        assert f["memory.required.kv"] == "992.0 MiB"

    @pytest.mark.parametrize("text", ["", "msg=", 'msg="offload', "common_memory_breakdown_print: | - CUDA0 (x) |",
                                      "load_tensors: offloaded x/y layers to GPU", "\x00\xff" * 40,
                                      'msg="gpu memory" free=abc', "llama_model_loader: - kv 3: llama.block_count"])
    def test_odd_lines_give_nothing_and_never_raise(self, text: str) -> None:
        """A line the scanner cannot read is no fact, never an exception."""
        fact = scan_line(1, text)
        assert fact is None or fact.kind in ("gpu_memory", "offloaded")


class TestKvArithmetic:
    def test_llama3_70b_kv_matches_the_printed_figure_of_issue_9181(self) -> None:
        """80 layers * 8 KV heads * (128 + 128) * 2 B = 327,680 B/token; 64000 tokens = 19.53 GiB, printed as
        memory.required.kv="19.5 GiB" in the 9181 log (HumanBytes2 rounds to 0.1 GiB)."""
        per = kv_bytes_per_token(80, 8, 128, 128, "f16")
        assert per == 327_680
        acc = account("partial_offload-insufficient_vram-unk-9181")
        assert acc.ctx_total == 64000
        assert abs(per * acc.ctx_total - (acc.kv or 0)) < 0.05 * GIB

    def test_real_h100_log_kv_buffer_is_layers_heads_dims_bytes(self) -> None:
        """The real 0.32.15 H100 log prints n_layer 2, n_head_kv 4, n_embd_head_k/v 16 and a 512-cell f16 cache:
        2 * 4 * (16 + 16) * 2 B * 512 = 262,144 B, its `CUDA0 KV buffer size = 0.25 MiB`."""
        (acc,) = accounts_of_text((FIXTURES / "ollama-real-gpu" / "healthy.server.log").read_bytes())
        per = kv_bytes_per_token(acc.meta_int("n_layer") or 0, acc.meta_int("n_head_kv") or 0,
                                 acc.meta_int("n_embd_head_k") or 0, acc.meta_int("n_embd_head_v"), acc.kv_type or "")
        assert per * (acc.ctx_total or 0) == 262_144 == acc.on_gpu["kv"]
        assert (acc.layers_gpu, acc.layers_total, acc.partial) == (3, 3, False)

    def test_per_token_from_metadata_or_from_the_printed_size(self) -> None:
        """With print_info's n_layer/n_head_kv/n_embd_head_k/v the formula (it agrees with the printed 1024 MiB at
        8192 tokens); without them, the printed KV over the context: 19.5 GiB / 64000 = 327,155 B, within 0.2 % of
        the 327,680 B that Llama-3-70B's shape gives."""
        per, how = kv_per_token(d_partial()) or (0, "")
        assert per == 131_072 and how.startswith("16 layers x 16 KV heads x (128 + 128) x 2 B")
        per, how = kv_per_token(account("partial_offload-insufficient_vram-unk-9181")) or (0, "")
        assert per == int(19.5 * GIB) // 64000 and "over 64000 tokens" in how
        assert abs(per - 327_680) / 327_680 < 0.002

    def test_quantised_cache_types_use_their_block_sizes(self) -> None:
        """q8_0 blocks are 34 B per 32 elements, q4_0 18 B: 0.53 and 0.28 of f16."""
        f16 = kv_bytes_per_token(32, 8, 128)
        assert kv_bytes_per_token(32, 8, 128, cache_type="q8_0") == f16 * 17 // 32
        assert kv_bytes_per_token(32, 8, 128, cache_type="q4_0") == f16 * 9 // 32


class TestFixtureAccounts:
    def test_every_partial_fixture_gets_an_account_and_advice(self) -> None:
        """All partial_offload fixtures: an account with a release line and a non-empty advice list."""
        assert len(PARTIAL) >= 3
        for case in PARTIAL:
            accs = accounts_of_text((case / "server.log").read_bytes())
            assert accs, case.name
            candidates, _note = advise(accs[-1])
            assert candidates, case.name

    def test_pr12000_figures_match_the_offload_line(self) -> None:
        """layers.model=49 layers.offload=48 memory.available=[11.1 GiB] required.full=11.4 GiB kv=992.0 MiB
        weights 6.0 GiB + 787.5 MiB, graph 519.5 MiB / 1.3 GiB, projector 795.9 MiB + 1.0 GiB; ctx 8192."""
        a = account("partial_offload-insufficient_vram-unk-pr12000")
        assert (a.release_line, a.layers_gpu, a.layers_total, a.gpus) == ("estimate", 48, 49, 1)
        assert a.vram_available == int(11.1 * GIB) and a.need_full == int(11.4 * GIB)
        assert a.kv == 992 * MIB and a.weights_repeating == 6 * GIB and a.weights_nonrepeating == int(787.5 * MIB)
        assert a.graph == int(519.5 * MIB) and a.graph_partial == int(1.3 * GIB)
        assert a.projector_weights == int(795.9 * MIB) and a.projector_graph == GIB
        assert a.gpu_overhead == 0 and a.ctx_total == 8192 and a.parallel == 1 and a.engine == "ollama"
        assert a.shortfall == int(11.4 * GIB) - int(11.1 * GIB)  # 0.3 GiB: full + overhead - available
        assert a.vram_free is None  # this release line does not print free memory: said, not guessed

    def test_9181_figures_match_the_offload_line(self) -> None:
        """Four 22.0 GiB GPUs, 44 of 81 layers (11,11,11,11), full 127.4 GiB, 64000-token context."""
        a = account("partial_offload-insufficient_vram-unk-9181")
        assert (a.layers_gpu, a.layers_total, a.gpus) == (44, 81, 4)
        assert a.vram_available == 4 * 22 * GIB and a.need_full == int(127.4 * GIB)
        assert a.weights_repeating == int(86.2 * GIB) and a.graph == a.graph_partial == int(8.2 * GIB)
        assert a.shortfall == int(127.4 * GIB) - 88 * GIB

    def test_10833_layout_lines_split_gpu_and_host(self) -> None:
        """Ollama engine layout lines: 12.7 GiB weights and a 167.7 MiB graph on CUDA0, 1.7 GiB weights and a
        9.0 GiB graph on the CPU; no layer count or free memory in these lines, so none is given."""
        a = account("partial_offload-insufficient_vram-unk-10833")
        assert a.release_line == "layout"
        assert a.on_gpu == {"weights": int(12.7 * GIB), "graph": int(167.7 * MIB)}
        assert a.off_gpu == {"weights": int(1.7 * GIB), "graph": 9 * GIB}
        assert a.layers_total is None and a.vram_free is None and a.shortfall is None
        candidates, note = advise(a)
        assert "layers" in note and all(c.layers is None for c in candidates)
        assert candidates[0].name == "graph" and "9.0 GiB" in candidates[0].setting


CORPUS = Path(__file__).resolve().parent / "corpus"
ALL_PARTIAL = PARTIAL + sorted(CORPUS.glob("partial_offload-*"))
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_ESTIMATE = re.compile(r"layers\.model=(\d+) layers\.offload=(\d+)")


class TestEveryPartialCase:
    @pytest.mark.parametrize("case", ALL_PARTIAL, ids=lambda p: p.name)
    def test_account_layers_match_the_log_and_advice_exists(self, case: Path) -> None:
        """Every partial-offload case (public fixtures and this repository's real-log corpus): the account's
        layers are the last `offloaded N/M` (the runner's report) or, without one, the `offload` estimate's; and
        there is an advice list."""
        text = (case / "server.log").read_bytes().decode(errors="replace")
        accs = accounts_of_text(text)
        assert accs, case.name
        acc = accs[-1]
        ran = _OFFLOADED.findall(text)
        est = _ESTIMATE.findall(text)
        if ran:
            assert (acc.layers_gpu, acc.layers_total) == tuple(int(x) for x in ran[-1])
        elif est:
            assert (acc.layers_total, acc.layers_gpu) == tuple(int(x) for x in est[-1])
        candidates, note = advise(acc)
        assert candidates and all(c.setting for c in candidates)
        assert note or any(c.layers is not None for c in candidates)


    def test_old_runner_buffers_split_gpu_and_host(self) -> None:
        """llama.cpp of 2024 printed `<dev> buffer size` without `model`; `CUDA_Host` is host memory."""
        (a,) = accounts_of_text((CORPUS / "partial_offload-insufficient_vram-unk-3301" / "server.log").read_bytes())
        assert a.release_line == "runner" and (a.layers_gpu, a.layers_total) == (30, 81)
        assert a.on_gpu == {"weights": int(13771.88 * MIB)} and a.off_gpu == {"weights": int(38110.61 * MIB)}
        (b,) = accounts_of_text((CORPUS / "partial_offload-insufficient_vram-unk-8393" / "server.log").read_bytes())
        assert b.on_gpu == {"weights": int(3627.97 * MIB)} and b.off_gpu == {"weights": int(809.84 * MIB)}
        _, note = advise(b)
        assert "2 of 33 layers and 810 MiB of weights are on the CPU" in note


    def test_no_layer_fit_need_from_the_parts(self) -> None:
        """ollama/ollama#10765: layers.offload=0 of 35 on 3.2 GiB, and memory.required.full=2.6 GiB, which then
        leaves out the graph and the minimum. From the parts: 2.3 GiB weights + 254 MiB KV + 795.9 MiB + 1.0 GiB
        projector + 1.0 GiB graph + 457 MiB minimum + one 60 MiB buffer layer = 5.8 GiB, 2.6 GiB short; shown by
        explain although the verdict's cause is not (yet) insufficient_vram; a CPU fallback for another reason
        (15918, a driver/library mismatch) shows no memory table."""
        path = CORPUS / "cpu_fallback-insufficient_vram-unk-10765" / "server.log"
        (a,) = accounts_of_text(path.read_bytes())
        assert a.layers_gpu == 0 and a.notes and "summed from the parts" in a.notes[0]
        assert abs((a.need_full or 0) - int(5.83 * GIB)) < 0.02 * GIB
        assert abs((a.shortfall or 0) - int(2.63 * GIB)) < 0.02 * GIB
        with open(path, "rb") as fh:
            _board, memory = explain_with_memory(fh)
        assert memory == [a] or (len(memory) == 1 and memory[0].shortfall == a.shortfall)
        model, note = fit_model(a)  # Ollama up to 0.7.0 put the projector's weights and graph on the first GPU:
        assert model is not None and model.predict(Change()).layers == 0  # 3.2 < 1.8 + 1.0 + 0.45 + 2 layers
        assert "with its graph (Ollama up to 0.7.0)" in note
        other = FIXTURES / "ollama-logs" / "cpu_fallback-driver_library_mismatch-0.20.6-15918" / "server.log"
        with open(other, "rb") as fh:
            _board, memory = explain_with_memory(fh)
        assert memory == []


class TestEstimateReplay:
    @pytest.mark.parametrize(("case", "layers"), [("partial_offload-insufficient_vram-unk-pr12000", 48),
                                                  ("partial_offload-insufficient_vram-unk-9181", 44)])
    def test_replay_reproduces_the_logs_layer_count(self, case: str, layers: int) -> None:
        """Ollama's EstimateGPULayers on the printed figures gives the printed layers.offload."""
        model, _note = fit_model(account(case))
        assert isinstance(model, EstimateFit) and model.calibrated
        assert model.predict(Change()).layers == layers

    def test_9181_reads_repeating_weights_with_kv(self) -> None:
        """Ollama before v0.6.1 summed each layer's KV into weights.repeating: only that reading gives 11 layers
        per 22 GiB card (1.08 GiB a layer with KV, 8.2 GiB graph, 457 MiB minimum)."""
        model, note = fit_model(account("partial_offload-insufficient_vram-unk-9181"))
        assert isinstance(model, EstimateFit) and model.includes_kv and "includes the KV" in note

    def test_pr12000_q8_cache_saves_half_the_kv(self) -> None:
        """992 MiB of f16 KV becomes 496 MiB at q8_0 (Ollama counts 1 byte an element): 496 - 307 MiB short
        leaves about 190 MiB, and all 49 layers fit."""
        candidates, _ = advise(account("partial_offload-insufficient_vram-unk-pr12000"))
        q8 = next(c for c in candidates if c.name == "kv_cache_q8_0")
        assert q8.fits and q8.layers == 49 and q8.margin is not None
        assert 150 * MIB < q8.margin < 230 * MIB
        assert "OLLAMA_FLASH_ATTENTION=1" in q8.note  # the log shows no flash attention for this load

    def test_pr12000_largest_context_that_fits(self) -> None:
        """KV scales with the context: 307 MiB short, plus 64 MiB kept for the log's one-decimal rounding, of
        992 MiB at 8192 tokens leaves 8192 * (992 - 371) / 992 = 5128 tokens; rounded down to 256 that is 5120."""
        candidates, _ = advise(account("partial_offload-insufficient_vram-unk-pr12000"))
        ctx = next(c for c in candidates if c.name == "num_ctx")
        assert ctx.setting.endswith("=5120") and ctx.fits and (ctx.margin or 0) >= 64 * MIB

    def test_9181_needs_a_smaller_model_not_a_smaller_context(self) -> None:
        """70B at 87 GiB over 4 x 22 GiB: no context fits it fully (the maintainer's advice in the thread was a
        smaller num_ctx or a more quantised model); the first change that fits is a quantisation."""
        a = account("partial_offload-insufficient_vram-unk-9181")
        candidates, _ = advise(a)
        ctx = next(c for c in candidates if c.name == "num_ctx")
        assert not ctx.fits and (ctx.layers or 0) > 44
        assert candidates[0].name == "quantisation" and candidates[0].fits
        assert "smallest change that fits: weights at most" in summary(a, candidates)

    def test_9181_model_refuses_a_quantised_cache(self) -> None:
        """The 9181 log says `kv cache type not supported by model`: the q8_0/q4_0 rows say so instead of sizing."""
        a = account("partial_offload-insufficient_vram-unk-9181")
        assert a.kv_quant_unsupported
        rows = [c for c in advise(a)[0] if c.name.startswith("kv_cache_")]
        assert len(rows) == 2 and all(c.layers is None and c.fits is False and "not supported" in c.note
                                      for c in rows)

    def test_overhead_is_given_back(self) -> None:
        """The same load on a card 1 GiB larger with OLLAMA_GPU_OVERHEAD=1 GiB: still 48 layers (the replay says
        so), and setting the overhead to 0 gives back 1 GiB: all 49 fit with about 1 GiB - 0.3 GiB to spare."""
        a = account("partial_offload-insufficient_vram-unk-pr12000")
        a.gpu_overhead = GIB
        a.vram_available = (a.vram_available or 0) + GIB
        model, _ = fit_model(a)
        assert model is not None and model.predict(Change()).layers == 48
        c = next(c for c in advise(a)[0] if c.name == "gpu_overhead")
        assert c.fits and c.layers == 49


class TestLlamaServerFit:
    def test_account_of_a_d_partial_load(self) -> None:
        """The breakdown's full-offload figures, the fit's 1448 MiB shortfall, the placed buffers."""
        a = d_partial()
        assert (a.release_line, a.layers_gpu, a.layers_total) == ("llama-server", 8, 17)
        assert (a.weights_total, a.kv, a.graph, a.need_full) == (2100 * MIB, 1024 * MIB, 300 * MIB, 3424 * MIB)
        assert a.vram_free == 3000 * MIB and a.fit_margin == 1024 * MIB and a.shortfall == 1448 * MIB
        assert a.on_gpu == {"weights": 987 * MIB, "kv": 512 * MIB, "graph": 300 * MIB}
        assert a.kv == kv_bytes_per_token(16, 16, 128) * 8192  # 131072 B/token * 8192

    def test_two_device_breakdown_is_summed(self) -> None:
        """One row per device in the first breakdown table: the account sums them (and ignores the table that
        llama-server prints again at exit)."""
        head = "common_memory_breakdown_print: |   - "
        rows = (f"{head}CUDA0 (H100 80GB HBM3) | 81079 =  3000 + (3424 =  2100 +    1024 +     300) +      74655 |\n"
                f"{head}CUDA1 (H100 80GB HBM3) | 81079 =  2000 + (1000 =   800 +     100 +     100) +      78079 |\n")
        (a,) = accounts_of_text(rows + "load_tensors: offloaded 8/17 layers to GPU\n" + rows)
        assert a.gpus == 2 and a.vram_free == 5000 * MIB and a.need_full == 4424 * MIB
        assert (a.weights_total, a.kv, a.graph) == (2900 * MIB, 1124 * MIB, 400 * MIB)
        assert a.shortfall == (4424 + 2048 - 5000) * MIB

    def test_per_layer_costs_from_full_minus_placed(self) -> None:
        """(2100 - 987) / 9 = 123.7 MiB of weights and (1024 - 512) / 9 = 56.9 MiB of KV a layer; the replay of
        (3000 - 1024 - 356.9) / 180.6 gives the 8 layers llama-server placed."""
        model = LlamaServerFit(d_partial())
        assert model.per_weights == pytest.approx((2100 - 987) / 9 * MIB)
        assert model.per_kv == pytest.approx(512 / 9 * MIB)
        assert model.predict(Change()).layers == 8

    def test_quantisation_is_the_change_that_fits(self) -> None:
        """Q4_K_M at 4.85 of 16 bits: 2100 * 4.85 / 16 = 636.6 MiB + 1024 + 300 = 1960.6 <= 1976 usable."""
        candidates, note = advise(d_partial())
        assert note == ""
        first = candidates[0]
        assert first.name == "quantisation" and "Q4_K_M" in first.setting and first.fits
        assert first.margin == pytest.approx((1976 - 2100 * 4.85 / 16 - 1324) * MIB, abs=MIB)
        q8 = next(c for c in candidates if c.name == "kv_cache_q8_0")
        assert not q8.fits and q8.layers == 10  # (1976 - 300 - 30.2) / (123.7 + 30.2) = 10.7

    def test_more_free_memory_fits_fully(self) -> None:
        """Freeing 1.5 GiB held by another process: 4536 - 1024 >= 3424."""
        a = d_partial()
        attach_holders(a, [{"pid": 4242, "name": "python3", "used": 1536 * MIB}, {"pid": 1, "used": 10}], [1])
        assert [(h.name, h.pid) for h in a.holders] == [("python3", 4242)]
        candidates, _ = advise(a)
        assert candidates[0].name == "free_vram" and candidates[0].fits
        assert "python3 (pid 4242, 1.5 GiB)" in candidates[0].setting

    def test_gpu_overhead_has_no_effect_on_llama_server(self) -> None:
        """0.30+: OLLAMA_GPU_OVERHEAD changes Ollama's `gpu memory` line, not llama-server's fit."""
        a = d_partial()
        a.gpu_overhead = GIB
        candidates, _ = advise(a)
        c = next(c for c in candidates if c.name == "gpu_overhead")
        assert c.fits is False and "no effect" in c.note


class TestLayoutFit:
    def test_account_and_replay_of_a_c_partial_load(self) -> None:
        """The layout lines split weights and KV between CUDA0 and the CPU; the `gpu memory` line gives free and
        available VRAM. Full offload: 4198.4 + 1024 MiB + the 300 MiB GPU graph = 5522.4 MiB against 4300.8
        available, 1221.6 MiB short. Per layer left: 125.2 MiB weights + 28.4 MiB KV; base 68.3 + 85.3 + 300 MiB;
        (4300.8 - 453.6) / 153.6 = 25.0: within one layer of the log's 24 (the sizes are printed to 0.1 GiB)."""
        (a,) = accounts_of_text(C_PARTIAL)
        assert (a.release_line, a.layers_gpu, a.layers_total) == ("layout", 24, 33)
        assert a.on_gpu == {"weights": 3 * GIB, "kv": 768 * MIB, "graph": 300 * MIB}
        assert a.off_gpu == {"weights": int(1.1 * GIB), "kv": 256 * MIB, "graph": 20 * MIB}
        assert a.vram_free == int(4.6 * GIB) and a.vram_available == int(4.2 * GIB) and a.minimum == 457 * MIB
        assert a.weights_total == 3 * GIB + int(1.1 * GIB) and a.kv == 1024 * MIB
        assert a.need_full == a.weights_total + 1324 * MIB and a.shortfall == a.need_full - int(4.2 * GIB)
        assert abs(a.shortfall - int(1221.6 * MIB)) < MIB
        model, note = fit_model(a)
        assert isinstance(model, LayoutFit) and note == ""
        assert abs(model.predict(Change()).layers - 24) <= 1

    def test_free_memory_and_overhead_candidates(self) -> None:
        """q8_0 KV (17/32 of f16): 125.2 + 15.1 MiB a layer, base 68.3 + 45.3 + 300: (4300.8 - 413.6) / 140.3 = 27.7
        -> 27 layers. 1.5 GiB of OLLAMA_GPU_OVERHEAD given back covers the 1221.6 MiB: all 33; 1 GiB does not."""
        (a,) = accounts_of_text(C_PARTIAL)
        model, _ = fit_model(a)
        assert model is not None
        assert model.predict(Change(kv=17 / 32)).layers == 27
        a.gpu_overhead = 1536 * MIB
        assert model.predict(Change(overhead=0)).layers == 33
        a.gpu_overhead = GIB
        assert model.predict(Change(overhead=0)).layers == 31


class TestExplainOutput:
    def test_text_table_for_a_partial_fixture(self) -> None:
        """`explain` prints the account and the advice table under the verdict."""
        path = FIXTURES / "ollama-logs" / "partial_offload-insufficient_vram-unk-pr12000" / "server.log"
        with open(path, "rb") as fh:
            board, memory = explain_with_memory(fh)
            verdict = board.verdict()
        assert verdict.outcome == "partial_offload" and len(memory) == 1
        text = render_text(verdict, "x", memory)
        assert "layers on GPU        48/49" in text and "short by             307 MiB" in text
        assert "OLLAMA_KV_CACHE_TYPE=q8_0" in text and "VRAM free at load    not in the log" in text

    def test_json_carries_account_and_advice(self) -> None:
        """--json: a `memory` list with the figures, advice and one summary line."""
        path = FIXTURES / "ollama-logs" / "partial_offload-insufficient_vram-unk-9181" / "server.log"
        import json

        with open(path, "rb") as fh:
            board, memory = explain_with_memory(fh)
            verdict = board.verdict()
        data = json.loads(render_json(verdict, "x", memory))
        (m,) = data["memory"]
        assert m["layers_gpu"] == 44 and m["advice"] and m["summary"].startswith("44/81 layers on GPU")

    def test_healthy_log_has_no_memory_table(self) -> None:
        """A full offload shows no account: nothing to explain."""
        with open(FIXTURES / "ollama-real-gpu" / "healthy.server.log", "rb") as fh:
            board, memory = explain_with_memory(fh)
            verdict = board.verdict()
        assert verdict.outcome == "gpu" and memory == []
        assert "memory of the load" not in render_text(verdict, "x", memory)

    def test_render_d_partial(self) -> None:
        """The table of a 0.30+ load names llama-server's fit and its target."""
        text = "\n".join(render([d_partial()]))
        assert "llama-server's fit" in text and "fit target 1.0 GiB" in text and "8/17" in text

    def test_readme_example_is_this_output(self) -> None:
        """The README's example table is what `explain` prints for the pr12000 fixture today."""
        readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
        block = readme.split("### Why is my model partly on the CPU?")[1].split("```")[1].strip("\n")
        path = FIXTURES / "ollama-logs" / "partial_offload-insufficient_vram-unk-pr12000" / "server.log"
        with open(path, "rb") as fh:
            _board, memory = explain_with_memory(fh)
        assert block == "\n".join(render(memory))
