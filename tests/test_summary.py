"""The pipeline summary lists every series by its id: evaluated, trained but not evaluated, or only recorded."""

import json

from ptychosteer.summary import pipeline_summary
from streamer.dectris import SeriesHeader
from streamer.hdf5 import RecordingWriter
from streamer.status import write_status


def test_every_series_is_listed_by_its_id_with_what_was_done_with_it(tmp_path):
    writer = RecordingWriter(tmp_path / "recording.h5")
    for series in (1, 2, 3):
        writer.put_series_header(SeriesHeader(series=series, detail="basic", config={"nimages": 4}))
    writer.close()
    write_status(tmp_path / "status" / "trainer.json", "trainer", {"tasks": [1, 2], "version": 2})
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "metrics.json").write_text(json.dumps({
        "metrics": {"final_error": {"0": 0.5}, "average_error": 0.5, "forgetting": {}}, "series": {"0": 1}}))
    summary = pipeline_summary(tmp_path)
    assert summary["tasks"] == {"1": "evaluated", "2": "not evaluated", "3": "not trained"}


def test_the_summary_shows_skill_after_each_task_and_the_steps_it_got(tmp_path):
    write_status(tmp_path / "status" / "trainer.json", "trainer", {"tasks": [1, 2], "version": 2})
    (tmp_path / "train").mkdir()
    report = {"final_error": {"0": 0.2, "1": 0.3}, "constant_guess": {"0": 0.4, "1": 0.3},
              "skill": {"0": 0.5, "1": 1.0}, "mean_skill": 0.75, "skill_after_task": {"0": 0.4, "1": 1.0}}
    (tmp_path / "train" / "metrics.json").write_text(json.dumps({
        "metrics": {"final_error": report["final_error"], "average_error": 0.25, "forgetting": {"0": 0.04}},
        "series": {"0": 1, "1": 2}, "skill": {"full": report, "illuminated": report},
        "steps_per_task": {"0": 350, "1": 410}}))
    summary = pipeline_summary(tmp_path)
    assert summary["skill_after_task"] == {"0": 0.4, "1": 1.0}
    assert summary["skill_after_task_illuminated"] == {"0": 0.4, "1": 1.0}
    assert summary["steps_per_task"] == {"0": 350, "1": 410}
    assert summary["newest_model_version"] == 2
