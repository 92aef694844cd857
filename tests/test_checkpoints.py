"""The one checkpoint scheme every loop uses: complete or ignored, the newest resumed, the older removed."""

from __future__ import annotations

import pytest

from feedlearn.data.checkpoints import Checkpoints


def write(text: str):
    def into(folder):
        (folder / "state.txt").write_text(text)

    return into


def test_the_newest_complete_checkpoint_is_resumed_and_all_but_the_one_before_go(tmp_path):
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    assert checkpoints.latest() is None
    checkpoints.save(2, write("two"))
    checkpoints.save(10, write("ten"))  # 10 > 2 numerically, though "step-10" < "step-2" as text
    step, folder = checkpoints.latest()
    assert step == 10 and (folder / "state.txt").read_text() == "ten"
    checkpoints.save(12, write("twelve"))
    assert sorted(p.name for p in checkpoints.folder.iterdir()) == ["step-10", "step-12"]
    (checkpoints.folder / "step-12" / "state.txt").write_text("twelv")  # damaged after it was written
    assert checkpoints.latest() == (10, checkpoints.folder / "step-10")
    checkpoints.save(14, write("fourteen"))  # the damaged one is not kept as the one before
    assert sorted(p.name for p in checkpoints.folder.iterdir()) == ["step-10", "step-14"]


class Crash(Exception):
    pass


def test_a_save_cut_short_leaves_the_previous_checkpoint_to_resume_from(tmp_path):
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    checkpoints.save(2, write("two"))

    def crash(folder):
        (folder / "state.txt").write_text("half")
        raise Crash

    with pytest.raises(Crash):
        checkpoints.save(4, crash)
    step, folder = checkpoints.latest()
    assert step == 2 and (folder / "state.txt").read_text() == "two"
    checkpoints.save(4, write("four"))  # the next save starts from an empty writing folder
    step, folder = checkpoints.latest()
    assert step == 4 and sorted(p.name for p in folder.iterdir()) == ["checkpoint.json", "state.txt"]


def test_a_crash_between_the_rename_and_the_cleanup_resumes_from_the_newer(tmp_path):
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    checkpoints.save(2, write("two"))
    (checkpoints.folder / "step-2").rename(checkpoints.folder / "kept")
    checkpoints.save(4, write("four"))
    (checkpoints.folder / "kept").rename(checkpoints.folder / "step-2")  # as if the cleanup never ran
    assert checkpoints.latest()[0] == 4


def test_a_folder_without_its_mark_is_never_resumed_and_remove_clears_all(tmp_path):
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    checkpoints.save(2, write("two"))
    (checkpoints.folder / "step-6").mkdir()  # torn: its files, no checkpoint.json
    assert checkpoints.latest()[0] == 2
    checkpoints.remove()
    assert not checkpoints.folder.exists() and checkpoints.latest() is None
