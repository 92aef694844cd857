"""Records, validated JSONL reading, crash-safe appends, atomic writes and the run store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from feedlearn.data import jsonl
from feedlearn.data.jsonl import (
    JsonlAppender,
    iter_jsonl,
    read_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from feedlearn.data.records import Episode, Message, SFTExample, Turn
from feedlearn.data.store import RunStore, open_run
from feedlearn.errors import ConfigError, DataError

GOOD = {"id": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


def ex(i: str, weight: float = 1.0) -> SFTExample:
    return SFTExample(
        id=i,
        messages=[Message(role="user", content=f"q{i}"), Message(role="assistant", content=f"a{i}")],
        weight=weight,
    )


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ---- reading -------------------------------------------------------------------------------------------


def test_read_jsonl_parses_and_skips_blank_lines(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD), "", "   ", json.dumps({**GOOD, "id": "b"})])
    records = read_jsonl(path, SFTExample)
    assert [r.id for r in records] == ["a", "b"]
    assert records[0].messages[1] == Message(role="assistant", content="yo")
    assert records[0].weight == 1.0


def test_malformed_json_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD), "", '{"id": "b", '])
    with pytest.raises(DataError) as e:
        read_jsonl(path, SFTExample)
    msg = str(e.value)
    assert msg.startswith(f"{path}:3: invalid JSON")  # blank line 2 still counts


def test_non_object_line(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD), "[1, 2]"])
    with pytest.raises(DataError, match=r":2: expected a JSON object, got list") as e:
        read_jsonl(path, SFTExample)
    assert str(path) in str(e.value)


def test_missing_field(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps({"id": "a"})])
    with pytest.raises(DataError) as e:
        read_jsonl(path, SFTExample)
    assert str(e.value).startswith(f"{path}:1: field 'messages'")
    assert "required" in str(e.value).lower()


def test_wrong_type_names_nested_field_path(tmp_path):
    bad = {"id": "b", "messages": [{"role": "bot", "content": "x"}]}
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD), json.dumps(bad)])
    with pytest.raises(DataError) as e:
        read_jsonl(path, SFTExample)
    assert str(e.value).startswith(f"{path}:2: field 'messages.0.role'")


def test_wrong_scalar_type_and_negative_weight(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps({**GOOD, "weight": "heavy"})])
    with pytest.raises(DataError, match=r":1: field 'weight'"):
        read_jsonl(path, SFTExample)
    path = write_lines(tmp_path / "e.jsonl", [json.dumps({**GOOD, "weight": -1})])
    with pytest.raises(DataError, match=r"e\.jsonl:1: field 'weight'"):
        read_jsonl(path, SFTExample)


def test_deep_field_path_in_episode(tmp_path):
    ep = {"id": "e", "task_id": "t", "prompt": [], "turns": [{"action": "a", "reward": 1}, {"action": "b"}]}
    path = write_lines(tmp_path / "ep.jsonl", [json.dumps(ep)])
    with pytest.raises(DataError, match=r"ep\.jsonl:1: field 'turns\.1\.reward'"):
        read_jsonl(path, Episode)


def test_unknown_field(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps({**GOOD, "wieght": 2.0})])
    with pytest.raises(DataError) as e:
        read_jsonl(path, SFTExample)
    assert str(e.value).startswith(f"{path}:1: field 'wieght'")
    assert "extra" in str(e.value).lower()


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl", SFTExample)


def test_iter_jsonl_yields_good_records_before_the_bad_line(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD), "oops"])
    it = iter_jsonl(path, SFTExample)
    assert next(it).id == "a"
    with pytest.raises(DataError, match=r":2: invalid JSON"):
        next(it)


def test_bad_byte_is_reported_after_the_good_lines_before_it(tmp_path):
    path = tmp_path / "d.jsonl"
    first = json.dumps({**GOOD, "id": "é"}, ensure_ascii=False).encode("utf-8") + b"\n"
    path.write_bytes(first + b"\n" + b'{"id": "b\x80"}\n')  # 0x80: a continuation byte with no lead
    it = iter_jsonl(path, SFTExample)
    assert next(it).id == "é"  # read line by line: the bad byte is not seen before its line
    with pytest.raises(DataError) as e:
        next(it)
    offset = len(first) + 1 + len(b'{"id": "b')
    assert str(e.value) == f"{path}:3: not valid UTF-8 (byte 0x80 at offset {offset})"


def test_folder_and_empty_files(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(DataError, match=r"/runs: is a folder, not a file$"):
        read_jsonl(tmp_path / "runs", SFTExample)
    empty = tmp_path / "labels.jsonl"  # the library's own files, e.g. a label cache, may hold no records
    empty.write_bytes(b"")
    assert read_jsonl(empty, SFTExample) == []
    empty.write_text("\n \n", encoding="utf-8")
    assert read_jsonl(empty, SFTExample) == []


def test_crlf_lines_and_byte_order_mark(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n\r\n" + b'{"id": "b", "messages": []}\r\n'
    )
    assert [r.id for r in read_jsonl(path, SFTExample)] == ["a", "b"]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("[" * 100_000, "nested too deeply"),
        ('{"id": ' + "9" * 5000 + "}", "Exceeds the limit (4300 digits) for integer string conversion"),
    ],
    ids=["deep", "long-number"],
)
def test_json_python_cannot_parse_is_one_line(tmp_path, line, problem):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD), line])
    with pytest.raises(DataError) as e:
        read_jsonl(path, SFTExample)
    assert str(e.value).startswith(f"{path}:2: invalid JSON ({problem}") and "\n" not in str(e.value)


# ---- appending ------------------------------------------------------------------------------------------


def test_appender_appends_and_reloads_ids(tmp_path):
    path = tmp_path / "sub" / "out.jsonl"
    app = JsonlAppender(path, SFTExample)
    assert app.records() == [] and app.ids == set()
    app.append(ex("1"))
    app.append(ex("2"), ex("3", weight=0.5))
    assert "2" in app and "4" not in app
    reopened = JsonlAppender(path, SFTExample)
    assert reopened.ids == {"1", "2", "3"}
    assert reopened.records() == [ex("1"), ex("2"), ex("3", weight=0.5)]
    assert len(path.read_text().splitlines()) == 3


def test_appender_refuses_duplicate_id_and_writes_nothing(tmp_path):
    path = tmp_path / "out.jsonl"
    app = JsonlAppender(path, SFTExample)
    app.append(ex("1"))
    before = path.read_bytes()
    with pytest.raises(DataError, match="record id '1' is already written") as e:
        app.append(ex("2"), ex("1"))
    assert str(path) in str(e.value)
    assert path.read_bytes() == before  # the new "2" was not written either
    assert app.ids == {"1"}
    # a fresh appender knows the ids on disk
    with pytest.raises(DataError):
        JsonlAppender(path, SFTExample).append(ex("1"))


def test_appender_refuses_duplicate_ids_within_one_call(tmp_path):
    path = tmp_path / "out.jsonl"
    app = JsonlAppender(path, SFTExample)
    with pytest.raises(DataError):
        app.append(ex("1"), ex("1"))
    assert not path.exists() or path.read_text() == ""


def test_appender_drops_torn_last_line(tmp_path):
    path = tmp_path / "out.jsonl"
    app = JsonlAppender(path, SFTExample)
    app.append(ex("1"), ex("2"))
    torn = ex("3").model_dump_json()
    with path.open("a", encoding="utf-8") as f:  # a crash mid-write: half a line, no newline
        f.write(torn[: len(torn) // 2])
    reopened = JsonlAppender(path, SFTExample)
    assert reopened.ids == {"1", "2"}
    assert reopened.records() == [ex("1"), ex("2")]
    reopened.append(ex("3"))  # the unfinished record can be written again, on a line of its own
    assert [r.id for r in read_jsonl(path, SFTExample)] == ["1", "2", "3"]
    assert path.read_text().count("\n") == 3


def test_appender_torn_only_line_leaves_empty_file(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "1", "mess', encoding="utf-8")
    app = JsonlAppender(path, SFTExample)
    assert app.ids == set()
    assert path.read_bytes() == b""


# ---- atomic writes --------------------------------------------------------------------------------------


def test_write_text_atomic_writes_whole_file(tmp_path):
    path = tmp_path / "deep" / "f.txt"
    write_text_atomic(path, "old")
    write_text_atomic(path, "new content\n" * 1000)
    assert path.read_text() == "new content\n" * 1000
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.txt"]


def test_write_text_atomic_failure_keeps_old_content_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    write_text_atomic(path, "old")

    def boom(fd):
        raise OSError("disk on fire")

    monkeypatch.setattr(jsonl.os, "fsync", boom)
    with pytest.raises(OSError, match="disk on fire"):
        write_text_atomic(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_write_json_atomic_unserializable_keeps_old(tmp_path):
    path = tmp_path / "f.json"
    write_json_atomic(path, {"a": 1, "é": [1.5]})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": 1, "é": [1.5]}
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": 1, "é": [1.5]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_write_jsonl_atomic_round_trips(tmp_path):
    path = tmp_path / "f.jsonl"
    write_jsonl_atomic(path, [ex("1"), ex("2", weight=12.18)])
    assert read_jsonl(path, SFTExample) == [ex("1"), ex("2", weight=12.18)]


def test_write_text_atomic_failure_in_replace_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    write_text_atomic(path, "old")

    def boom(src, dst):
        raise OSError("replace failed")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="replace failed"):
        write_text_atomic(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


# ---- records --------------------------------------------------------------------------------------------


def test_episode_conversation_order():
    prompt = [Message(role="system", content="S"), Message(role="user", content="Q")]
    ep = Episode(
        id="e",
        task_id="t",
        prompt=prompt,
        turns=[
            Turn(action="A1", reward=0.0, feedback="F1"),
            Turn(action="A2", reward=0.0, feedback="F2"),
            Turn(action="A3", reward=1.0),
        ],
    )

    def pairs(msgs):
        return [(m.role, m.content) for m in msgs]

    assert pairs(ep.conversation()) == [
        ("system", "S"),
        ("user", "Q"),
        ("assistant", "A1"),
        ("user", "F1"),
        ("assistant", "A2"),
        ("user", "F2"),
        ("assistant", "A3"),
    ]
    first = [("system", "S"), ("user", "Q"), ("assistant", "A1"), ("user", "F1")]
    assert pairs(ep.conversation(upto=1)) == first
    assert pairs(ep.conversation(upto=0)) == [("system", "S"), ("user", "Q")]
    assert ep.conversation(upto=3) == ep.conversation()
    assert ep.prompt == prompt and len(ep.prompt) == 2  # the prompt is not mutated


def test_records_forbid_unknown_fields_and_negative_weight():
    with pytest.raises(ValueError):
        Turn(action="a", reward=1.0, rewrd=2)
    with pytest.raises(ValueError):
        SFTExample(id="x", messages=[], weight=-0.5)


# ---- run store ------------------------------------------------------------------------------------------


def test_open_run_same_config_twice(tmp_path):
    config = {"seed": 0, "train": {"learning_rate": 1e-05, "turns": [1, 16]}, "model": {"path": "tiny"}}
    store = open_run(tmp_path, "r1", config)
    assert store.path == tmp_path / "r1"
    assert yaml.safe_load((store.path / "config.yaml").read_text()) == config
    again = open_run(tmp_path, "r1", json.loads(json.dumps(config)))
    assert again.path == store.path


def test_open_run_different_config_is_refused(tmp_path):
    config = {"seed": 0, "train": {"learning_rate": 1e-05}}
    store = open_run(tmp_path, "r1", config)
    (store.path / "sft").mkdir()
    (store.path / "sft" / "episodes.jsonl").write_text("{}\n")  # a stage has produced something
    with pytest.raises(ConfigError, match="--run-id") as e:
        open_run(tmp_path, "r1", {"seed": 1, "train": {"learning_rate": 1e-05}})
    assert str(tmp_path / "r1") in str(e.value)
    # the saved config is untouched, and another run id is fine
    assert yaml.safe_load((tmp_path / "r1" / "config.yaml").read_text()) == config
    assert open_run(tmp_path, "r2", {"seed": 1}).path == tmp_path / "r2"


def test_log_metrics_appends_rows(tmp_path):
    store = RunStore(tmp_path, "run")
    store.log_metrics("train", {"losses/loss": 1.5}, step=1)
    store.log_metrics("train", {"losses/loss": 0.75}, step=2)
    store.log_metrics("evaluate", {"acc@t1": 0.25})
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows] == [("train", 1), ("train", 2), ("evaluate", None)]
    assert [r.get("losses/loss") for r in rows] == [1.5, 0.75, None]
    assert rows[2]["acc@t1"] == 0.25
    assert all(isinstance(r["time"], float) for r in rows)


def test_a_run_that_produced_nothing_takes_the_corrected_config(tmp_path):
    store = open_run(tmp_path, "r", {"data": "typo.jsonl"})
    (store.path / "train").mkdir()  # a stage started, then failed before writing anything
    fixed = open_run(tmp_path, "r", {"data": "data.jsonl"})
    assert yaml.safe_load((fixed.path / "config.yaml").read_text()) == {"data": "data.jsonl"}
    fixed.log_metrics("train", {"losses/loss": 1.0}, step=1)
    with pytest.raises(ConfigError, match="different config"):
        open_run(tmp_path, "r", {"data": "other.jsonl"})


def test_a_summary_row_replaces_the_stages_earlier_summary(tmp_path):
    store = RunStore(tmp_path, "run")
    store.log_metrics("collect", {"episodes": 10})
    store.log_metrics("train", {"losses/loss": 1.0}, step=1)
    store.log_metrics("collect", {"episodes": 12})  # the stage ran again (a rerun, a resume)
    assert [(r["stage"], r["step"], r.get("episodes")) for r in store.metrics()] == [
        ("train", 1, None),
        ("collect", None, 12),
    ]


def test_drop_metrics_removes_the_steps_after_a_checkpoint_of_that_stage_only(tmp_path):
    store = RunStore(tmp_path, "run")
    for step in (1, 2, 3):
        store.log_metrics("train", {"losses/loss": float(step)}, step=step)
        store.log_metrics("sft", {"losses/loss": float(step)}, step=step)
    store.log_metrics("train", {"examples": 3})
    store.drop_metrics("train", after_step=1)
    rows = [(r["stage"], r["step"]) for r in store.metrics()]
    assert rows == [("train", 1), ("sft", 1), ("sft", 2), ("sft", 3), ("train", None)]


def test_a_metrics_line_torn_by_a_crash_is_dropped_when_the_run_opens(tmp_path):
    store = RunStore(tmp_path, "run")
    store.log_metrics("train", {"losses/loss": 1.0}, step=1)
    with store.metrics_path.open("a") as f:
        f.write('{"stage": "train", "step": 2, "los')  # killed mid-write
    store = RunStore(tmp_path, "run")
    store.log_metrics("train", {"losses/loss": 2.0}, step=2)
    assert [r["step"] for r in store.metrics()] == [1, 2]


LOCK_HOLDER = """
import sys, time
from feedlearn.data.store import open_run
open_run(sys.argv[1], "r", {})
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_writer_is_refused_with_the_holders_pid_and_a_dead_holder_leaves_no_lock(tmp_path):
    import signal
    import subprocess
    import sys

    from feedlearn.errors import FeedlearnError

    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        metrics = tmp_path / "r" / "metrics.jsonl"
        metrics.write_text('{"stage": "train", "step": 1}\n{"stage": "train", "st')  # the holder mid-write
        with pytest.raises(FeedlearnError) as refused:
            open_run(tmp_path, "r", {})
        message = str(refused.value)
        assert message == (
            f"run folder {tmp_path / 'r'} is in use by process {holder.pid}: wait for it to finish, "
            "or pass --run-id NEW to start another run"
        )
        assert metrics.read_text().endswith('"st')  # the refused process left the holder's line alone
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    store = open_run(tmp_path, "r", {})  # the kernel released the dead holder's lock
    assert (store.path / ".lock").read_text() == f"{os.getpid()}\n"
    assert open_run(tmp_path, "r", {}).path == store.path  # this process may open its own run again
