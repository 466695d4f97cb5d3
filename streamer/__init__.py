"""Streamer stage: detector simulator, SIMPLON stream v1 wire, ingest (validate, persist, fan out), HDF5 I/O.

Public entry points: :func:`streamer.ingest.run` (``IngestConfig``) and :func:`streamer.simulator.run`
(``SimulatorConfig``). Imports no other stage.
"""
