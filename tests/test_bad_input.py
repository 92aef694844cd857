"""Every file a user gives, read by every loader: a byte that is not UTF-8, a folder, an empty file.

Each is reported on one line naming the file (and the line and byte offset for a bad byte), as the
loader's error type; the library's own JSONL files may be empty.
"""

from __future__ import annotations

import json

import pytest

from feedlearn.config import read_yaml
from feedlearn.data.jsonl import read_jsonl
from feedlearn.data.preferences import load_pairs
from feedlearn.data.records import SFTExample
from feedlearn.errors import ConfigError, DataError
from feedlearn.tasks.math_data import load_problems
from feedlearn.verifiers.verbal import load_feedbacks


def read_examples(path):
    return read_jsonl(path, SFTExample)


def lines(*rows: dict) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def array(*rows: dict) -> str:
    return "[" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "]\n"


PAIR = {"prompt": "Le café est", "chosen": " chaud.", "rejected": " froid."}
GSM8K = {"question": "Combien de cafés ? 3 + 4", "answer": "#### 7"}
MATH = {"problem": "Quelle réponse ?", "solution": r"\boxed{7}"}
PROBLEM = {"id": "p", "question": "Quelle réponse ?", "answer": "7", "source": "synthetic"}
FEEDBACK = {
    "content": "Sois bref, André",
    "domain": "emails",
    "effect": "use few words",
    "type": "qualitative",
}

# name, file name, a valid file of 2+ lines whose first line holds a 2-byte character, loader, error type
LOADERS = [
    (
        "read_jsonl",
        "d.jsonl",
        lines({"id": "é", "messages": []}, {"id": "b", "messages": []}),
        read_examples,
        DataError,
    ),
    ("read_yaml", "r.yaml", "# récipe\nmethod: rise\nseed: 0\n", read_yaml, ConfigError),
    ("load_pairs-jsonl", "pairs.jsonl", lines(PAIR, {**PAIR, "chosen": " tiède."}), load_pairs, DataError),
    (
        "load_pairs-json",
        "pairs.json",
        array(PAIR, {**PAIR, "chosen": " tiède."}),
        load_pairs,
        DataError,
    ),
    ("load_problems-gsm8k", "g.jsonl", lines(GSM8K, GSM8K), lambda p: load_problems(p, "gsm8k"), DataError),
    ("load_problems-math", "m.jsonl", lines(MATH, MATH), lambda p: load_problems(p, "math"), DataError),
    (
        "load_problems-feedlearn",
        "p.jsonl",
        lines(PROBLEM, {**PROBLEM, "id": "q"}),
        lambda p: load_problems(p, "feedlearn"),
        DataError,
    ),
    (
        "load_feedbacks-yaml",
        "fb.yaml",
        "# é\n- content: a\n  domain: b\n  effect: c\n  type: qualitative\n",
        load_feedbacks,
        DataError,
    ),
    (
        "load_feedbacks-json",
        "fb.json",
        array(FEEDBACK, {**FEEDBACK, "content": "b"}),
        load_feedbacks,
        DataError,
    ),
]
IDS = [case[0] for case in LOADERS]


def one_line_error(load, path, error) -> str:
    with pytest.raises(error) as e:
        load(path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(("name", "file", "good", "load", "error"), LOADERS, ids=IDS)
def test_bad_byte_names_file_line_and_offset(tmp_path, name, file, good, load, error):
    path = tmp_path / file
    path.write_text(good, encoding="utf-8")
    load(path)  # the file is valid as written
    first, rest = good.encode("utf-8").split(b"\n", 1)
    path.write_bytes(first + b"\n" + rest[:3] + b"\xff" + rest[3:])
    offset = len(first) + 1 + 3
    assert len(first) > len(good.split("\n", 1)[0])  # the offset counts bytes, not characters
    msg = one_line_error(load, path, error)
    assert msg == f"{path}:2: not valid UTF-8 (byte 0xff at offset {offset})"


@pytest.mark.parametrize(("name", "file", "good", "load", "error"), LOADERS, ids=IDS)
def test_truncated_multibyte_character(tmp_path, name, file, good, load, error):
    path = tmp_path / file
    data = good.encode("utf-8")
    path.write_bytes(data + "é".encode()[:1])  # a file cut in the middle of a character
    lineno = data.count(b"\n") + 1
    msg = one_line_error(load, path, error)
    assert msg == f"{path}:{lineno}: not valid UTF-8 (byte 0xc3 at offset {len(data)})"


@pytest.mark.parametrize(("name", "file", "good", "load", "error"), LOADERS, ids=IDS)
def test_folder_given_for_a_file(tmp_path, name, file, good, load, error):
    folder = tmp_path / file  # named like a data file, so only being a folder is wrong with it
    folder.mkdir()
    assert one_line_error(load, folder, error) == f"{folder}: is a folder, not a file"


EMPTY = {
    "read_yaml": "the recipe is empty; write a YAML mapping of keys to values",
    "load_pairs-jsonl": "no preference pairs in the file",
    "load_pairs-json": "no preference pairs in the file",
    "load_problems-gsm8k": "no problems in the file",
    "load_problems-math": "no problems in the file",
    "load_problems-feedlearn": "no problems in the file",
    "load_feedbacks-yaml": "no feedbacks in the file",
    "load_feedbacks-json": "no feedbacks in the file",
}


@pytest.mark.parametrize("text", ["", "\n  \n\n"], ids=["zero-bytes", "blank-lines"])
@pytest.mark.parametrize(("name", "file", "good", "load", "error"), LOADERS, ids=IDS)
def test_empty_user_file_says_so(tmp_path, name, file, good, load, error, text):
    path = tmp_path / file
    path.write_text(text, encoding="utf-8")
    if name == "read_jsonl":  # the library's own run files (label caches, ...) may be empty
        assert read_examples(path) == []
        return
    assert one_line_error(load, path, error) == f"{path}: {EMPTY[name]}"


@pytest.mark.parametrize(
    ("file", "text", "load", "expected"),
    [
        ("pairs.json", "[]", load_pairs, "no preference pairs in the file"),
        ("fb.yaml", "# nothing yet\n", load_feedbacks, "no feedbacks in the file"),
        ("fb.yaml", "feedbacks: []\n", load_feedbacks, "no feedbacks in the file"),
        ("fb.json", "[]", load_feedbacks, "no feedbacks in the file"),
        (
            "r.yaml",
            "# nothing yet\n",
            read_yaml,
            "the recipe is empty; write a YAML mapping of keys to values",
        ),
    ],
)
def test_file_holding_no_records(tmp_path, file, text, load, expected):
    path = tmp_path / file
    path.write_text(text, encoding="utf-8")
    error = ConfigError if load is read_yaml else DataError
    assert one_line_error(load, path, error) == f"{path}: {expected}"


@pytest.mark.parametrize(("name", "file", "good", "load", "error"), LOADERS, ids=IDS)
def test_byte_order_mark_is_accepted(tmp_path, name, file, good, load, error):
    path = tmp_path / file
    path.write_bytes(b"\xef\xbb\xbf" + good.encode("utf-8"))  # as Windows editors save "UTF-8"
    load(path)


@pytest.mark.parametrize(("name", "file", "good", "load", "error"), LOADERS, ids=IDS)
def test_unreadable_file(tmp_path, monkeypatch, name, file, good, load, error):
    path = tmp_path / file
    path.write_text(good, encoding="utf-8")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(path), "open", denied)
    monkeypatch.setattr(type(path), "read_bytes", denied)
    assert one_line_error(load, path, error) == f"{path}: cannot read the file (Permission denied)"


# ---- model paths and failed writes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("runs/x/sft/model", "model folder 'runs/x/sft/model' does not exist: check model.path"),
        ("/no/such/model", "model folder '/no/such/model' does not exist"),
        ("./model", "model folder './model' does not exist"),
        ("org/model", r"cannot load model 'org/model' \(no local folder of that name; as a hub id\): "),
    ],
)
def test_a_model_path_that_names_no_folder_says_so(path, message, monkeypatch, tmp_path):
    from feedlearn.errors import FeedlearnError
    from feedlearn.models.loading import ModelSettings, load_policy

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FeedlearnError, match=message) as err:
        load_policy(ModelSettings(path=path))
    assert "\n" not in str(err.value)


def test_a_file_given_as_a_model_folder_says_so(tmp_path):
    from feedlearn.errors import FeedlearnError
    from feedlearn.models.loading import ModelSettings, load_policy

    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(FeedlearnError, match="weights.bin' is a file: give the model's folder"):
        load_policy(ModelSettings(path=str(tmp_path / "weights.bin")))


RECIPE = """method: dpo
model: {path: tiny}
train_data: {synthetic: {n: 8}}
"""


@pytest.mark.parametrize(
    ("error", "free", "message"),
    [
        (OSError(28, "No space left on device"), 10 << 30, "the disk is full"),
        (RuntimeError("basic_ios::clear: iostream error"), 1 << 20, "the disk is full (1 MiB free)"),
        (
            PermissionError(13, "Permission denied", "/ro/cache/tiny"),
            10 << 30,
            "/ro/cache/tiny: cannot write",
        ),
        (OSError(30, "Read-only file system", "/ro/run"), 10 << 30, "/ro/run: cannot write there"),
    ],
)
def test_a_full_disk_or_unwritable_place_is_one_line_through_the_cli(
    tmp_path, monkeypatch, capsys, error, free, message
):
    import shutil
    from collections import namedtuple

    from feedlearn import cli
    from feedlearn.methods.dpo.stages import PreferenceLearning

    def fails(self):
        raise error

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(free * 2, free, free))
    monkeypatch.setattr(PreferenceLearning, "run", fails)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE + f"run_dir: {tmp_path / 'runs'}\n")
    assert cli.main(["run", str(recipe)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and message in line


def test_other_errors_keep_their_traceback_when_the_disk_has_room(tmp_path, monkeypatch):
    from feedlearn import cli
    from feedlearn.methods.dpo.stages import PreferenceLearning

    def fails(self):
        raise RuntimeError("a bug")

    monkeypatch.setattr(PreferenceLearning, "run", fails)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE + f"run_dir: {tmp_path / 'runs'}\n")
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["run", str(recipe)])
