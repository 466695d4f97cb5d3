"""The ingest's numbering of detector armings (``Ingest._arm``), for any sequence of series ids a detector sends."""

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.config import IngestConfig
from streamer.dectris import SeriesHeader
from streamer.ingest import Ingest


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=20))
def test_recorded_series_ids_increase_in_arming_order_and_keep_the_detectors_own(ids):
    """Whatever a detector numbers (restarts from 1, reused ids, jumps): each arming gets its own id, the ids
    increase in arming order, a detector id above all given so far is kept as it is, and the detector's own id
    goes along wherever it was changed (counted as rearmed)."""
    ingest = Ingest(IngestConfig(output_path=""))
    try:
        armed = [ingest._arm(SeriesHeader(series=s, detail="basic")) for s in ids]
    finally:
        ingest.close()
    recorded = [h.series for h in armed]
    assert all(a < b for a, b in zip(recorded, recorded[1:]))
    assert [h.detector_series for h in armed] == ids
    for k, (own, h) in enumerate(zip(ids, armed)):
        assert (h.series == own) == (k == 0 or own > recorded[k - 1])
    assert ingest.stats.rearmed == sum(h.series != own for own, h in zip(ids, armed))
