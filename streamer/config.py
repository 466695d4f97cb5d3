"""Frozen, keyword-only configuration of the streamer stage (simulator, replay, ingest), validated on creation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from streamer.compression import encoding_for
from streamer.physics import FAMILIES

import numpy as np

_BIT_DEPTHS: Final = {8: np.uint8, 16: np.uint16, 32: np.uint32}


PROTOCOLS = ("v1", "v2")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class SimulatorConfig:
    """The detector simulator: a far-field ptychography experiment that speaks SIMPLON stream v1 or v2."""

    endpoint: str = "tcp://127.0.0.1:9999"  # bound PUSH socket, as an EIGER's stream interface
    frame_size: int = 64  # detector frame (and object patch) side in pixels
    scans: int = 4  # one series per scan
    families: tuple[str, ...] = FAMILIES  # object family per scan, cycled
    object_size_px: int = 192  # side of each scan's object field
    probe_diameter_px: float = 0.0  # FWHM; 0 means frame_size / 2
    probe_curvature_rad: float = 1.0
    overlap: float = 0.6  # linear overlap of neighbouring probe footprints (step = diameter × (1 − overlap))
    scan_pattern: str = "raster"  # raster | fermat
    photons_per_frame: float = 1e6  # total counts for a fully transmitting object
    bit_depth: int = 32  # uint32 (an EIGER2 at high count rates: 1e6 photons do not clip); 16, 8 (raw/lz4 only)
    saturation_counts: int = 0  # 0 means the type's maximum
    rate_hz: float = 0.0  # frames per second; 0 sends as fast as the receiver takes them
    encoding: str = "bslz4"  # raw | lz4 | bslz4 (or a wire name such as "bs16-lz4<")
    protocol: str = "v1"  # SIMPLON stream v1 (multipart JSON) or v2 (one CBOR message per ZeroMQ message)
    header_detail: str = "basic"  # none | basic | all
    energy_eV: float = 8800.0
    detector_distance_m: float = 2.0
    detector_pixel_size_m: float = 75e-6
    seed: int = 0
    send_positions: bool = True  # ptychosteer extension part (a real EIGER never sends it)
    send_labels: bool = True  # ground-truth amplitude/phase (simulation only)
    first_series: int = 1
    follow_wait_s: float = 0.0  # closed loop: at the end of a scan, wait this long for steering's decision
    sndhwm: int = 10_000
    linger_ms: int = 30_000  # on close, wait this long for a receiver to take queued frames

    def __post_init__(self) -> None:
        if self.frame_size < 8 or self.frame_size > 4096:
            raise ValueError(f"frame_size must be in 8..4096 pixels, got {self.frame_size}")
        if self.object_size_px < self.frame_size:
            raise ValueError(f"object_size_px ({self.object_size_px}) must be >= frame_size ({self.frame_size})")
        if self.scans < 1:
            raise ValueError("scans must be >= 1")
        unknown = [f for f in self.families if f not in FAMILIES]
        if not self.families or unknown:
            raise ValueError(f"unknown object families {unknown}; choose from {', '.join(FAMILIES)}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.scan_pattern not in ("raster", "fermat"):
            raise ValueError(f"scan_pattern must be raster or fermat, got {self.scan_pattern!r}")
        if self.bit_depth not in _BIT_DEPTHS:
            raise ValueError(f"bit_depth must be one of {sorted(_BIT_DEPTHS)}, got {self.bit_depth}")
        if self.header_detail not in ("none", "basic", "all"):
            raise ValueError(f"header_detail must be none, basic or all, got {self.header_detail!r}")
        for name in ("photons_per_frame", "energy_eV", "detector_distance_m", "detector_pixel_size_m"):
            _positive(name, getattr(self, name))
        if self.rate_hz < 0:
            raise ValueError("rate_hz must be >= 0 (0 = unthrottled)")
        encoding_for(self.dtype, self.encoding)  # raises on a bad name or a type mismatch
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_BIT_DEPTHS[self.bit_depth])

    @property
    def wire_encoding(self) -> str:
        return encoding_for(self.dtype, self.encoding)

    @property
    def probe_diameter(self) -> float:
        return self.probe_diameter_px or self.frame_size / 2

    @property
    def step_px(self) -> float:
        return max(1.0, self.probe_diameter * (1 - self.overlap))

    @property
    def saturation(self) -> int:
        return self.saturation_counts or int(np.iinfo(self.dtype).max)


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """The ingest: receive from a detector, validate, persist to HDF5, fan out to trainers and live consumers."""

    detector_endpoint: str = "tcp://127.0.0.1:9999"  # the detector's PUSH endpoint (we connect PULL)
    output_path: str = "runs/recording.h5"  # "" disables persistence
    overwrite: bool = False  # replace a file already at output_path (else the ingest refuses to start)
    train_endpoint: str = "tcp://127.0.0.1:5560"  # bound PUSH, round-robin to trainer ranks; "" disables
    live_endpoint: str = "tcp://127.0.0.1:5561"  # bound PUB for steering and viewers; "" disables
    # bound XPUB of series notices for every trainer rank (streamer.notices); "" (the default): the notices go only
    # round-robin with the frames, and a rank can miss a header. The pipeline sets it (on a port the OS picks).
    notice_endpoint: str = ""
    protocol: str = "v1"  # SIMPLON stream v1 (multipart JSON) or v2 (CBOR); the other one is counted, not parsed
    compression: str = "bslz4"  # HDF5 filter for frames: none | bslz4 (hdf5plugin; bitshuffle blobs written as sent)
    direct_chunks: bool = True  # with bslz4: write a detector's bitshuffle-LZ4 blobs as sent (False: decode, recompress)
    block_frames: int = 256  # frames gathered before one HDF5 write
    flush_interval_s: float = 1.0  # a crash loses at most this much of the recording
    train_hwm: int = 1000  # frames queued per trainer before counting drops
    live_hwm: int = 1000
    rcvhwm: int = 100_000
    recv_timeout_ms: int = 200  # poll tick of the receive loop
    stats_interval_s: float = 5.0
    max_series: int = 0  # stop after this many dseries_end (0: run until stopped)
    max_frames: int = 0  # stop after this many images (0: unlimited)
    idle_timeout_s: float = 0.0  # stop when nothing arrives for this long (0: never)
    max_quarantine: int = 10_000  # raw messages kept in /entry/quarantine; later ones are only counted
    quarantine_budget_bytes: int = 256 << 20  # beyond this, quarantined messages keep only 1 KiB of each part
    max_message_bytes: int = 0  # larger messages are quarantined unparsed (0: 4x the largest legal frame, >= 64 MiB)
    writer_queue_blocks: int = 64  # blocks waiting for the disk before the receive loop waits
    close_linger_ms: int = 10_000  # at exit, wait this long for trainers/live consumers to take queued frames
    verify_hash: bool = False  # check each image's dimage-1.0 MD5 against its blob (costs ~50 us per 32 KiB)
    # recorded series ids are >= this; a detector's lower id is given the next id from here (counted as rearmed):
    # an ingest restarted after a detector restart continues the earlier run's numbering (ingest --after), so no
    # series id means two acquisitions downstream (0: the detector's ids as they come)
    first_series: int = 0

    def __post_init__(self) -> None:
        if self.compression not in ("none", "bslz4"):
            raise ValueError(f"compression must be none or bslz4, got {self.compression!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.block_frames < 1 or self.writer_queue_blocks < 1:
            raise ValueError("block_frames and writer_queue_blocks must be >= 1")
        for name in ("flush_interval_s", "stats_interval_s"):
            _positive(name, getattr(self, name))
        if self.recv_timeout_ms < 1:
            raise ValueError("recv_timeout_ms must be >= 1")
        if min(self.max_series, self.max_frames, self.idle_timeout_s, self.max_quarantine,
               self.quarantine_budget_bytes, self.max_message_bytes, self.first_series) < 0:
            raise ValueError("max_series, max_frames, idle_timeout_s, max_quarantine, quarantine_budget_bytes, "
                             "max_message_bytes and first_series must be >= 0")
        if not self.detector_endpoint:
            raise ValueError("detector_endpoint is required")
