"""The ingest's numbering of detector armings (``Ingest._arm``), for any sequence of series ids a detector sends."""

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.config import IngestConfig
from streamer.dectris import SeriesHeader
from streamer.ingest import Ingest


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=20), st.sampled_from([0, 1, 5, 13]))
def test_recorded_series_ids_increase_in_arming_order_and_keep_the_detectors_own(ids, first):
    """Whatever a detector numbers (restarts from 1, reused ids, jumps): each arming gets its own id, the ids
    increase in arming order, a detector id above all given so far is kept as it is, and the detector's own id
    goes along wherever it was changed (counted as rearmed). With ``first_series`` (an ingest continuing an
    earlier run's numbering) no recorded id is below it, and the first arming keeps its id only from there."""
    ingest = Ingest(IngestConfig(output_path="", first_series=first))
    try:
        armed = [ingest._arm(SeriesHeader(series=s, detail="basic")) for s in ids]
    finally:
        ingest.close()
    recorded = [h.series for h in armed]
    assert all(a < b for a, b in zip(recorded, recorded[1:]))
    assert [h.detector_series for h in armed] == ids
    for k, (own, h) in enumerate(zip(ids, armed)):
        assert (h.series == own) == (own > recorded[k - 1] if k else own >= first)
    assert recorded[0] == max(ids[0], first)
    assert ingest.stats.rearmed == sum(h.series != own for own, h in zip(ids, armed))
