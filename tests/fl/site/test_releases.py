"""The release memory as a journal: what one process appends, another sees; a crash's torn line, a
corrupt entry, a replaced file and the memory from before the journal; and the site runtime's caches
(release memory, layout, enrolment) never serve another folder's, model's or file's."""

from __future__ import annotations

import os

import pytest

from fedmed.config import ModelSpec
from fedmed.fl.enrolment import Roster, enrol_sites
from fedmed.fl.site.releases import (
    LEGACY_FILE,
    LegacyMemory,
    ReleaseMemory,
    ReleaseMemoryError,
    ReleaseRefused,
    RosterMemory,
    UnmaskedSum,
)
from fedmed.fl.site.runtime import SiteRuntime
from fedmed.fl.site.settings import SiteSettings
from fedmed.fl.wire.layout import Layout
from fedmed.models import trainable_state

ROSTER, START = "r" * 64, "a" * 64


def admit(memory: ReleaseMemory, session: str, participants=(1, 2, 3), start: str = START) -> None:
    memory.admit_session(ROSTER, session, global_sha256=start, participants=participants, dp=False)


def agree(memory: ReleaseMemory, session: str, survivors=(1, 2, 3), start: str = START) -> None:
    memory.check_sum(ROSTER, global_sha256=start, survivors=survivors, dp=False)
    memory.record_sum(ROSTER, session=session, global_sha256=start, survivors=survivors, dp=False)


def test_what_one_process_remembers_the_other_refuses(tmp_path):
    one, other = ReleaseMemory(tmp_path), ReleaseMemory(tmp_path)
    admit(other, "s0")  # `other` has read the journal before `one` writes to it
    admit(one, "s1")
    agree(one, "s1")
    with pytest.raises(ReleaseRefused, match="s1 was already run with this site"):
        admit(other, "s1")
    with pytest.raises(ReleaseRefused, match=r"over sites \[1, 2, 3\]"):
        other.check_sum(ROSTER, global_sha256=START, survivors=(1, 2), dp=False)
    with pytest.raises(ReleaseRefused, match="could be differenced"):
        admit(other, "s2", participants=(1, 2, 4))
    other.check_sum(ROSTER, global_sha256="b" * 64, survivors=(1, 2), dp=False)  # another start is another sum
    restarted = ReleaseMemory(tmp_path)
    assert [s.session for _, s in restarted.sums()] == ["s1"]
    with pytest.raises(ReleaseRefused, match="s0 was already run"):
        admit(restarted, "s0")


def test_a_refused_check_changes_nothing(tmp_path):
    memory = ReleaseMemory(tmp_path)
    admit(memory, "s1")
    agree(memory, "s1")
    before = memory.path.read_bytes()
    with pytest.raises(ReleaseRefused):
        admit(memory, "s1")
    with pytest.raises(ReleaseRefused):
        admit(memory, "s2", participants=(1, 2))
    assert memory.path.read_bytes() == before


def test_a_torn_last_line_is_ignored_and_cut_off_before_the_next_entry(tmp_path):
    memory = ReleaseMemory(tmp_path)
    admit(memory, "s1")
    whole = memory.path.read_bytes()
    with open(memory.path, "ab") as stream:  # a crash in the middle of remembering a sum
        stream.write(b'{"kind":"sum","roster":"' + ROSTER.encode() + b'","sum":{"session":"s1","glo')
    for reader in (memory, ReleaseMemory(tmp_path)):  # the process that held it, and a restarted one
        assert reader.sums() == []
        with pytest.raises(ReleaseRefused, match="s1 was already run"):
            admit(reader, "s1")
    admit(ReleaseMemory(tmp_path), "s2")
    assert memory.path.read_bytes().startswith(whole) and memory.path.read_bytes().count(b"\n") == 2
    with pytest.raises(ReleaseRefused, match="s2 was already run"):
        admit(memory, "s2")


def test_a_corrupt_entry_stops_every_release_naming_the_file_and_line(tmp_path):
    memory = ReleaseMemory(tmp_path)
    admit(memory, "s1")
    admit(memory, "s2")
    lines = memory.path.read_bytes().splitlines(keepends=True)
    memory.path.write_bytes(lines[0] + b'{"kind":"session","roster":"x"}\n' + lines[1])
    for reader in (memory, ReleaseMemory(tmp_path)):
        with pytest.raises(ReleaseMemoryError, match=r"releases.jsonl: .*unreadable \(line 2: "):
            admit(reader, "s3")
        with pytest.raises(ReleaseMemoryError, match="line 2"):
            reader.check_sum(ROSTER, global_sha256=START, survivors=(1, 2), dp=False)
    assert memory.path.read_bytes().count(b"\n") == 3  # nothing was written


def test_a_replaced_or_shortened_journal_is_read_again_whole(tmp_path):
    memory = ReleaseMemory(tmp_path)
    admit(memory, "s1")
    backup = memory.path.read_bytes()
    admit(memory, "s2")
    agree(memory, "s2")
    restored = tmp_path / "restored"
    restored.write_bytes(backup)
    os.replace(restored, memory.path)  # restored from a backup: another file
    assert memory.sums() == []
    admit(memory, "s2")  # the restored memory never saw s2
    memory.path.write_bytes(b"")  # shortened in place
    admit(memory, "s1")
    memory.path.unlink()
    admit(memory, "s1")


def test_the_memory_from_before_the_journal_is_honoured_and_never_written(tmp_path):
    earlier = UnmaskedSum(session="old", global_sha256=START, survivors=(1, 2, 3), dp=False)
    legacy = tmp_path / LEGACY_FILE
    legacy.write_text(LegacyMemory(rosters={ROSTER: RosterMemory(sessions=["old"], sums=[earlier])},
                                   evaluations={START: {"dice": 0.5}}).model_dump_json())
    before = legacy.read_bytes()
    memory = ReleaseMemory(tmp_path)
    with pytest.raises(ReleaseRefused, match="old was already run"):
        admit(memory, "old")
    with pytest.raises(ReleaseRefused, match="could be differenced"):
        admit(memory, "new", participants=(1, 2))
    admit(memory, "new")
    assert memory.evaluation(START) == {"dice": 0.5} and [s for _, s in memory.sums()] == [earlier]
    assert legacy.read_bytes() == before
    legacy.write_text("{not json")
    with pytest.raises(ReleaseMemoryError, match=rf"{LEGACY_FILE}: .*unreadable"):
        ReleaseMemory(tmp_path).sums()


def test_the_runtime_keeps_one_memory_per_folder(tmp_path):
    runtime = SiteRuntime(SiteSettings(data="synthetic", partition=0, device="cpu"))
    a, b = runtime.releases(tmp_path / "a"), runtime.releases(tmp_path / "b")
    assert runtime.releases(tmp_path / "a") is a and b is not a
    admit(a, "s1")
    admit(b, "s1")  # another site's folder: its own memory


def test_another_model_in_the_same_runtime_gets_its_own_layout(tmp_path):
    runtime = SiteRuntime(SiteSettings(data="synthetic", partition=0, device="cpu"))
    layouts, models = {}, []
    for method in ("fedmsa", "fedsam", "fedmsa"):
        model, layout = runtime.model(ModelSpec(image_size=32, method=method), num_classes=2, seed=0)
        assert layout == Layout.of(trainable_state(model)) and layout.numel == sum(layout.sizes)
        layouts.setdefault(method, layout)
        assert layout == layouts[method] and all(model is not earlier for earlier in models)
        models.append(model)
    assert layouts["fedmsa"].digest != layouts["fedsam"].digest
    model, _ = runtime.model(ModelSpec(image_size=32, method="fedmsa"), num_classes=2, seed=0)
    assert model is models[-1]  # the same instructions: the model built before


def test_the_runtime_reads_the_enrolment_again_when_its_files_change(tmp_path):
    keys, roster = enrol_sites(tmp_path / "enrol", ["a", "b", "c"])
    runtime = SiteRuntime(SiteSettings(data="synthetic", partition=0, device="cpu"))
    identity, first = runtime.enrolment(str(keys[0]), str(roster))
    assert runtime.enrolment(str(keys[0]), str(roster))[1] is first
    _, other_roster = enrol_sites(tmp_path / "other", ["a", "b", "d"])
    os.replace(other_roster, roster)  # re-enrolled: another roster file under the same name
    _, second = runtime.enrolment(str(keys[0]), str(roster))
    assert second == Roster.load(roster) and second.digest != first.digest
    assert runtime.enrolment(str(keys[1]), str(roster))[0] != identity
