"""`report_to`: a tiny DPO run's metrics reach TensorBoard (read back with TensorBoard's own reader) and
wandb in offline mode, beside metrics.jsonl; a tracker that cannot start does not stop the run."""

from __future__ import annotations

import json

import pytest

from feedlearn.data.store import open_run
from feedlearn.methods.dpo.config import DPOConfig
from feedlearn.methods.dpo.stages import PreferenceLearning
from feedlearn.trackers import hyperparameters


def dpo_run(tmp_path, report_to: list[str]) -> PreferenceLearning:
    config = DPOConfig.model_validate(
        {
            "method": "dpo",
            "run_dir": str(tmp_path / "runs"),
            "model": {"path": "tiny"},
            "tiny": {"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2},
            "train_data": {"synthetic": {"n": 32, "seed": 0}},
            "eval_data": {"synthetic": {"n": 16, "seed": 1}},
            "train": {"batch_size": 8, "grad_accum": 1, "epochs": 1, "max_length": 64},
            "report_to": report_to,
        }
    )
    store = open_run(config.run_dir, "tracked", config.model_dump(mode="json"))
    return PreferenceLearning(config, store, progress=False)


def logged(run) -> dict[str, list[tuple[int, float]]]:
    rows = [json.loads(line) for line in (run.store.path / "metrics.jsonl").read_text().splitlines()]
    out: dict[str, list] = {}
    for r in rows:
        for k, v in r.items():
            if k not in ("stage", "step", "time") and isinstance(v, int | float) and not isinstance(v, bool):
                out.setdefault(f"{r['stage']}/{k}", []).append((r["step"] or 0, v))
    return out


def test_tensorboard_gets_every_metric_at_its_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = dpo_run(tmp_path, ["tensorboard"])
    run.train()
    run.evaluate()
    (events,) = (run.store.path / "trackers" / "tensorboard" / "tracked").glob("events.out.tfevents.*")
    reader = EventAccumulator(str(events))
    reader.Reload()
    expected = logged(run)
    assert "train/losses/loss" in expected and "evaluate/preference_accuracy" in expected
    assert set(expected) <= set(reader.Tags()["scalars"])
    for key, points in expected.items():
        seen = [(e.step, e.value) for e in reader.Scalars(key)]
        assert [s for s, _ in seen] == [s for s, _ in points], key
        assert [v for _, v in seen] == pytest.approx([v for _, v in points], rel=1e-6), key


def test_wandb_offline_writes_its_run_folder_and_a_broken_tracker_does_not_stop_the_run(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run = dpo_run(tmp_path, ["wandb"])
    run.train()
    run.store.trackers.finish()
    (offline,) = (run.store.path / "trackers" / "wandb" / "wandb").glob("offline-run-*")
    assert list(offline.glob("*.wandb"))  # the run's history, to `wandb sync` later
    import accelerate.tracking

    def broken(self):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(accelerate.tracking.WandBTracker, "start", broken)
    again = dpo_run(tmp_path / "again", ["wandb"])
    assert again.store.trackers.trackers == []
    again.train()  # metrics.jsonl alone
    assert "train/losses/loss" in logged(again)


def wandb_records(path):
    """The records of a wandb offline `.wandb` file (wandb's log format: a 7-byte header, then 32 KiB
    blocks of chunks, each a crc32, a length and a type (1 whole, 2 first, 3 middle, 4 last)), up to the
    first chunk not yet written whole."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, records, pending, at = path.read_bytes(), [], b"", 7
    while data.startswith(b":W&B") and at + 7 <= len(data):
        if 32768 - at % 32768 < 7:  # a block's tail too short for a chunk header is padding
            at += 32768 - at % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[at : at + 7])
        if kind == 0 or at + 7 + length > len(data):  # the end, or a chunk wandb is still writing
            break
        pending += data[at + 7 : at + 7 + length]
        at += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def finished_wandb_records(folder):
    """The records of the one offline run under `folder`, once wandb's service has written its exit
    record (it may still be writing when `finish` returns)."""
    import time

    (path,) = folder.glob("offline-run-*/*.wandb")
    deadline = time.monotonic() + 60
    while not ((records := wandb_records(path)) and records[-1].HasField("exit")):
        assert time.monotonic() < deadline, "wandb never finished its run's file"
        time.sleep(0.1)
    return records


def test_wandb_keeps_the_evaluation_results_in_its_run_summary(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run = dpo_run(tmp_path, ["wandb"])
    run.train()
    run.evaluate()
    run.store.trackers.finish()
    records = finished_wandb_records(run.store.path / "trackers" / "wandb" / "wandb")

    def items(kind: str):
        for r in records:
            if r.WhichOneof("record_type") == kind:
                for i in r.summary.update if kind == "summary" else r.history.item:
                    yield i.key or "/".join(i.nested_key), json.loads(i.value_json)

    summary = dict(items("summary"))
    logged_keys = {key for key, _ in items("history")}
    evaluation = json.loads((run.store.path / "evaluate" / "metrics.json").read_text())
    assert "train/losses/loss" in logged_keys
    assert summary["evaluate/preference_accuracy"] == pytest.approx(evaluation["preference_accuracy"])


def test_wandb_keeps_a_later_stages_steps_that_start_again_at_1(tmp_path, monkeypatch):
    from feedlearn.trackers import Trackers

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    trackers = Trackers(["wandb"], tmp_path, "stages", {})
    for step in (1, 2, 3):
        trackers.log("iter1/train", {"losses/loss": 1.0 / step}, step)
    for step in (1, 2):
        trackers.log("iter2/train", {"losses/loss": 0.5 / step}, step)
    trackers.finish()
    rows = []
    for r in finished_wandb_records(tmp_path / "wandb" / "wandb"):
        if r.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    later = [
        (row["iter2/train/step"], row["iter2/train/losses/loss"]) for row in rows if "iter2/train/step" in row
    ]
    assert later == [(1, 0.5), (2, 0.25)]


def test_hyperparameters_are_flat_scalars():
    assert hyperparameters({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": "x"}) == {
        "a.b": 1,
        "a.c": "[1, 2]",
        "d": None,
        "e": "x",
    }


def test_dpo_steps_log_trls_reward_diagnostics(tmp_path):
    run = dpo_run(tmp_path, [])
    run.train()
    rows = [json.loads(line) for line in (run.store.path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["stage"] == "train" and r["step"] is not None]
    assert steps and all(
        {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(r)
        for r in steps
    )
    for r in steps:
        assert r["rewards/margins"] == pytest.approx(r["rewards/chosen"] - r["rewards/rejected"], abs=1e-6)
        assert 0.0 <= r["rewards/accuracies"] <= 1.0


def images_of(page) -> list[str]:
    import re

    return re.findall(r'<img src="([^"]+)"', page.read_text())


def test_report_writes_curves_and_a_self_contained_page_naming_every_metric(tmp_path, capsys):
    from feedlearn.cli import main

    run = dpo_run(tmp_path, [])
    run.train()
    run.evaluate()
    assert main(["report", str(run.store.path)]) == 0
    page = run.store.path / "report" / "index.html"
    text = page.read_text()
    assert images_of(page) == ["curves_train.png", "results.png"]  # and accuracy against labels queried
    assert all((page.parent / src).stat().st_size > 0 for src in images_of(page))
    evaluation = json.loads((run.store.path / "evaluate" / "metrics.json").read_text())
    assert all(f"<td>{key}</td>" in text for key in evaluation)
    assert "http" not in text and "<script" not in text  # nothing to fetch, nothing to run


def test_report_skips_a_torn_metrics_line_and_names_a_corrupt_result_file(tmp_path, capsys):
    from feedlearn.cli import main

    run = dpo_run(tmp_path, [])
    run.train()
    run.evaluate()
    with (run.store.path / "metrics.jsonl").open("a") as f:
        f.write('{"stage": "train", "step": 99, "losses/lo')  # what a SIGKILL mid-write leaves
    assert main(["report", str(run.store.path)]) == 0
    results = run.store.path / "evaluate" / "metrics.json"
    results.write_text('{"preference_accuracy": 0.')
    capsys.readouterr()
    assert main(["report", str(run.store.path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {results}: not valid JSON") and "\n" not in error


def test_a_rise_report_has_its_accuracy_per_turn_figure(tmp_path, capsys):
    from feedlearn.cli import main

    run = tmp_path / "rise-run"
    run.mkdir()
    (run / "config.yaml").write_text("method: rise\n")
    for folder, accuracy in (("base", 20.0), ("iter1", 30.0)):
        metrics = {"acc@t1": accuracy, "acc@t2": accuracy + 5, "p1@t2": accuracy + 10, "p2@t1": accuracy + 3}
        (run / "evaluate" / folder).mkdir(parents=True)
        (run / "evaluate" / folder / "metrics.json").write_text(json.dumps(metrics))
    rows = [{"stage": "iter1/train", "step": s, "time": 0, "losses/loss": 1.0 / s} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["report", str(run)]) == 0
    page = run / "report" / "index.html"
    assert images_of(page) == ["curves_iter1_train.png", "accuracy_per_turn.png"]
    assert all((page.parent / src).exists() for src in images_of(page))
    assert "<th>base</th><th>iter1</th>" in page.read_text()


def test_c3po_and_reflect_rl_reports_have_their_figures(tmp_path, capsys):
    from feedlearn.cli import main

    scopes = {"in_scope_adherence": 80.0, "near_scope_changed": 10.0, "out_scope_changed": 5.0}
    layouts = {
        "c3po": {"evaluate/d1c27ec1": {m: scopes for m in ("c3po", "scd", "in_context")}},
        "reflect-rl": {
            f"evaluate/{stage}": {
                "success": s,
                "levels": {"dropoff": {"success": s}, "pickup": {"success": s / 2}},
            }
            for stage, s in (("sft", 40.0), ("rl", 70.0))
        },
    }
    for method, folders in layouts.items():
        run = tmp_path / method
        for folder, metrics in folders.items():
            (run / folder).mkdir(parents=True)
            (run / folder / "metrics.json").write_text(json.dumps(metrics))
        (run / "config.yaml").write_text(f"method: {method}\n")
        assert main(["report", str(run)]) == 0
        assert images_of(run / "report" / "index.html") == ["results.png"]
        assert (run / "report" / "results.png").stat().st_size > 0


def test_report_of_two_runs_compares_them_side_by_side(tmp_path, capsys):
    from feedlearn.cli import main

    runs = []
    for name, accuracy in (("a", 60.0), ("b", 70.0)):
        run = tmp_path / name
        (run / "evaluate").mkdir(parents=True)
        (run / "config.yaml").write_text("method: dpo\n")
        (run / "evaluate" / "metrics.json").write_text(json.dumps({"preference_accuracy": accuracy}))
        runs.append(str(run))
    assert main(["report", *runs]) == 0
    page = tmp_path / "a" / "report" / "compare.html"
    assert "<th>a/a</th><th>b/b</th>" in page.read_text()
    assert images_of(page) == ["a__results.png", "b__results.png"]
    assert all((page.parent / src).exists() for src in images_of(page))
