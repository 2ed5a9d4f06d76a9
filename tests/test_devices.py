"""Device filters in UUIDs: indexes mapped only when CUDA's order is known, MIG UUIDs, stale entries, never widened."""

from __future__ import annotations

from launcher.devices import Gpu, cuda_order, narrowed, read_filter, read_token, split

A = Gpu(0, "GPU-aaaaaaaa-0000-0000-0000-000000000000", "00000000:01:00.0", "NVIDIA H100")
B = Gpu(1, "GPU-bbbbbbbb-1111-1111-1111-111111111111", "00000000:41:00.0", "NVIDIA A100")
MIG = Gpu(2, "GPU-cccccccc-2222-2222-2222-222222222222", "00000000:81:00.0", "NVIDIA A100", mig_mode=True,
          mig=("MIG-11111111-aaaa-5aaa-8aaa-aaaaaaaaaaaa", "MIG-22222222-bbbb-5bbb-8bbb-bbbbbbbbbbbb"))
PCI = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
STALE = "GPU-deadbeef-0000-0000-0000-000000000000"


class TestSplit:
    def test_entries_are_split_on_commas_and_trimmed(self) -> None:
        """`0, GPU-x,,1` has three entries; blanks around them do not count."""
        assert split("0, GPU-x,,1") == ["0", "GPU-x", "1"]


class TestOrder:
    def test_pci_order_maps_indexes_by_bus_id(self) -> None:
        """With CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA numbers GPUs by PCI bus id, whatever order they are given in."""
        assert cuda_order([B, A], PCI) == (A, B)

    def test_fastest_first_with_several_gpus_is_not_known(self) -> None:
        """CUDA's default order (fastest first) is not NVML's: no mapping is guessed."""
        assert cuda_order([A, B], {}) is None

    def test_a_single_gpu_is_index_zero_in_any_order(self) -> None:
        """One GPU: index 0 is that GPU whatever the order."""
        assert cuda_order([A], {}) == (A,)


class TestToken:
    def test_index_mapped_in_pci_order(self) -> None:
        """`1` with PCI order is the second GPU by bus id."""
        tok = read_token("1", [A, B], (A, B))
        assert (tok.kind, tok.uuid, tok.exists) == ("index", B.uuid, True)

    def test_index_unmapped_says_why(self) -> None:
        """`1` in the default order: it exists (two GPUs) but which one is not known, and the fix is named."""
        tok = read_token("1", [A, B], None)
        assert (tok.uuid, tok.exists) == (None, None)
        assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in tok.why

    def test_index_out_of_range_is_stale(self) -> None:
        """`2` on a two-GPU machine names nothing."""
        assert read_token("2", [A, B], None).exists is False

    def test_unique_uuid_prefix_matches(self) -> None:
        """The driver accepts a unique UUID prefix: `GPU-bbbb` is B."""
        assert read_token("GPU-bbbb", [A, B], None).uuid == B.uuid

    def test_ambiguous_prefix_names_nothing(self) -> None:
        """`GPU-` alone matches every GPU: the driver rejects it."""
        assert read_token("GPU-", [A, B], None).exists is False

    def test_mig_uuid_of_a_listed_instance(self) -> None:
        """A MIG-… UUID NVML lists is a MIG instance of its GPU."""
        tok = read_token("MIG-2222", [A, MIG], None)
        assert (tok.kind, tok.uuid, tok.exists) == ("mig", MIG.mig[1], True)

    def test_legacy_mig_form_names_its_parent_gpu(self) -> None:
        """`MIG-GPU-<uuid>/1/0` (CUDA 11) is an instance of that GPU."""
        tok = read_token(f"MIG-{MIG.uuid}/1/0", [A, MIG], None)
        assert (tok.kind, tok.exists) == ("mig", True) and MIG.uuid in tok.why

    def test_mig_uuid_unverifiable_when_instances_are_not_listed(self) -> None:
        """A MIG-mode GPU whose instances NVML did not list: a MIG UUID cannot be proven stale."""
        bare = Gpu(0, A.uuid, mig_mode=True)
        assert read_token("MIG-99999999", [bare], None).exists is None

    def test_mig_uuid_on_a_machine_without_mig_is_stale(self) -> None:
        """No GPU is in MIG mode: a MIG UUID names nothing here."""
        assert read_token("MIG-99999999", [A, B], None).exists is False

    def test_garbage_is_stale(self) -> None:
        """Neither an index nor a UUID: the driver stops there."""
        assert read_token("first", [A], None).exists is False


class TestReadFilter:
    def test_index_filter_hides_the_other_gpu(self) -> None:
        """`1` in PCI order shows B and hides A; nothing is stale."""
        r = read_filter("1", [A, B], PCI)
        assert [t.uuid for t in r.visible] == [B.uuid] and r.hidden == (A.uuid,) and not r.stale

    def test_unmapped_index_hides_nothing_known(self) -> None:
        """`1` in the default order: hidden GPUs are not guessed, and a note says why."""
        r = read_filter("1", [A, B], {})
        assert r.hidden == () and "not mapped" in r.notes[0]

    def test_stale_entry_cuts_off_the_rest(self) -> None:
        """CUDA stops at the first entry naming nothing: later entries are ignored, and B is hidden."""
        r = read_filter(f"{A.uuid},{STALE},{B.uuid}", [A, B], {})
        assert [t.text for t in r.stale] == [STALE] and [t.text for t in r.ignored] == [B.uuid]
        assert r.cuts_off and r.hidden == (B.uuid,)

    def test_repeated_entry_stops_parsing(self) -> None:
        """A repeat counts as a bad entry, as in the driver."""
        r = read_filter("0,0,1", [A, B], PCI)
        assert [t.text for t in r.stale] == ["0"] and [t.text for t in r.ignored] == ["1"]

    def test_mig_instance_keeps_its_parent_visible(self) -> None:
        """A MIG instance named: its GPU is not hidden, the others are."""
        r = read_filter(MIG.mig[0], [A, B, MIG], {})
        assert r.hidden == (A.uuid, B.uuid)

    def test_without_nvml_the_drivers_answer_marks_the_stale_entry(self) -> None:
        """No NVML: CUDA showed one device for three entries, so the second names nothing; the third is unknown."""
        r = read_filter(f"{A.uuid},{STALE},GPU-bbbb", None, {}, cuda_saw=(A.uuid,))
        assert [t.text for t in r.stale] == [STALE] and r.ignored[0].exists is None and r.cuts_off

    def test_a_driver_that_read_on_past_the_stale_entry_is_believed(self) -> None:
        """NVML says B is listed after a stale entry; CUDA showed B anyway: nothing is cut off, nothing to narrow."""
        r = read_filter(f"{A.uuid},{STALE},{B.uuid}", [A, B], {}, cuda_saw=(A.uuid, B.uuid))
        assert not r.cuts_off and r.hidden == () and [t.text for t in r.stale] == [STALE]
        assert any("CUDA skipped it" in n for n in r.notes)
        assert narrowed(r)[0] is None

    def test_the_drivers_answer_confirms_the_cut(self) -> None:
        """CUDA showed only A: the rule holds and B is hidden."""
        r = read_filter(f"{A.uuid},{STALE},{B.uuid}", [A, B], {}, cuda_saw=(A.uuid,))
        assert r.cuts_off and r.hidden == (B.uuid,)


class TestNarrowed:
    def test_stale_entry_dropped_nothing_added(self) -> None:
        """The stale entry goes; the GPUs listed around it stay, as UUIDs; no GPU the operator did not list."""
        value, _ = narrowed(read_filter(f"{A.uuid},{STALE},GPU-bbbb", [A, B, MIG], {}))
        assert value == f"{A.uuid},{B.uuid}"

    def test_only_stale_entries_are_never_widened_to_all(self) -> None:
        """Every entry stale: no patch (unset would mean every GPU), advice instead."""
        value, why = narrowed(read_filter(STALE, [A, B], {}))
        assert value is None and "never widened" in why

    def test_a_working_filter_is_the_operators_choice(self) -> None:
        """`1` names a GPU that exists: nothing to correct."""
        value, why = narrowed(read_filter("1", [A, B], PCI))
        assert value is None and "operator's choice" in why

    def test_trailing_stale_entry_hides_nothing(self) -> None:
        """`0,<stale>`: nothing after the stale entry, so dropping it would change nothing CUDA shows."""
        value, why = narrowed(read_filter(f"0,{STALE}", [A, B], PCI))
        assert value is None and "hides no entry" in why

    def test_unmapped_index_is_kept_as_written(self) -> None:
        """An index whose GPU is not known is kept as the operator wrote it."""
        value, _ = narrowed(read_filter(f"1,{STALE},{A.uuid}", [A, B], {}))
        assert value == f"1,{A.uuid}"
