"""Reading the stages' status files (written with :func:`streamer.status.write_status`)."""

from streamer.status import read_status, write_status

__all__ = ["read_status", "write_status"]
