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
