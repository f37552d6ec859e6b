"""What runs print and track: the driver's per-epoch lines, TensorBoard event files and MLflow
(local file store) fed from the Ray Train report stream, and the short ending tables."""

from __future__ import annotations

import io
import os
import struct

import pytest

from gleam.config import TrackingConfig
from gleam.progress import RunMonitor, chance_recall, generic_epoch_line, recall_table, tag

REPORTS = [
    {"epoch": 0, "global_step": 3, "loss": 2.5, "lr": 1e-3, "train_samples_per_second": 30.0},
    {"epoch": 1, "global_step": 6, "loss": 2.0, "lr": 5e-4, "train_samples_per_second": 32.0,
     "val/query->satellite/all/R@1": 25.0, "val/query->satellite/all/top1%_k": 1.0, "flag": True},
]


def read_scalars(folder: str) -> dict[str, list[tuple[int, float]]]:
    """Scalars of the TensorBoard event files in ``folder`` (TFRecord: length, crc, Event proto, crc)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for name in sorted(os.listdir(folder)):
        data = open(os.path.join(folder, name), "rb").read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def feed(monitor: RunMonitor) -> None:
    for metrics in REPORTS:  # what Ray Train's controller does with every report
        monitor.callback.after_report(None, [metrics, {**metrics, "loss": 99.0}], None)


def test_reports_reach_the_printer_and_tensorboard(ray_session, tmp_path):
    stream = io.StringIO()
    with RunMonitor(str(tmp_path), TrackingConfig(), generic_epoch_line(2), stream=stream) as monitor:
        feed(monitor)
    lines = stream.getvalue().splitlines()
    assert lines == ["epoch 1/2 | step 3 | loss 2.5000 | lr 1.00e-03 | 30.0 samples/s",
                     "epoch 2/2 | step 6 | loss 2.0000 | lr 5.00e-04 | 32.0 samples/s"]  # rank 0's reports
    scalars = read_scalars(str(tmp_path / "tensorboard"))
    assert scalars["loss"] == [(3, 2.5), (6, 2.0)]
    assert scalars["val/query_to_satellite/all/R_at_1"] == [(6, 25.0)]
    assert "val/query_to_satellite/all/top1pct_k" in scalars and "flag" not in scalars
    assert tag("val/satellite->query/uav/R@top1%") == "val/satellite_to_query/uav/R_at_top1pct"


def test_mlflow_file_store_gets_params_metrics_and_run_files(ray_session, tmp_path):
    pytest.importorskip("mlflow")  # dev extra (pyproject: mlflow-skinny); the code path is optional
    from mlflow.tracking import MlflowClient

    store = f"file:{tmp_path / 'mlruns'}"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text('{"epochs": 2}')
    (run_dir / "checkpoint_0").mkdir()  # checkpoints stay out of MLflow
    tracking = TrackingConfig(tensorboard=False, mlflow_uri=store, mlflow_experiment="gleam-test")
    with RunMonitor(str(run_dir), tracking, generic_epoch_line(2), params={"train.lr": 0.001, "run.name": "x"},
                    run_name="x", stream=io.StringIO()) as monitor:
        feed(monitor)
    monitor.close_mlflow(str(run_dir))
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("gleam-test")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "x" and run.info.status == "FINISHED"
    assert run.data.params == {"train.lr": "0.001", "run.name": "x"}
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [(3, 2.5), (6, 2.0)]
    assert run.data.metrics["val/query_to_satellite/all/R_at_1"] == 25.0
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["summary.json"]
    assert not (run_dir / "tensorboard").exists()


def test_mlflow_missing_is_a_clear_error(ray_session, tmp_path, monkeypatch):
    import sys

    for name in ["mlflow", "mlflow.entities", "mlflow.tracking", *[m for m in sys.modules if m.startswith("mlflow.")]]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(ValueError, match=r"tracking.mlflow_uri=.*not installed.*pip install"):
        RunMonitor(str(tmp_path), TrackingConfig(mlflow_uri="file:/x"), generic_epoch_line(1))


def test_recall_table_puts_chance_beside_each_view():
    metrics = {"val/query->satellite/uav/R@1": 25.0, "val/query->satellite/uav/R@5": 75.0,
               "val/query->satellite/uav/queries": 8, "val/query->satellite/uav/gallery_size": 8,
               "val/query->satellite/all/R@1": 12.5, "val/query->satellite/all/R@5": 50.0,
               "val/query->satellite/all/queries": 32, "val/query->satellite/all/gallery_size": 40}
    lines = recall_table(metrics, "val/query->satellite").splitlines()
    assert lines[0].split() == ["view", "queries", "R@1", "%", "R@5", "%", "chance", "R@1", "%", "chance", "R@5", "%"]
    assert lines[2].split() == ["uav", "8", "25.0", "75.0", "12.5", "62.5"]
    assert lines[3].split() == ["all", "32", "12.5", "50.0", "2.5", "12.5"]  # "all" last
    assert chance_recall(10, 4) == 100.0 and recall_table({}, "val") == ""
