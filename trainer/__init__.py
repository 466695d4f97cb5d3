"""Trainer stage: continual, data-parallel training of PtychoNN on the live stream.

Models (:mod:`trainer.models`), strategies naive/ER/DER/DER++/from-scratch (:mod:`trainer.strategies`), the
learner over the distributed rehearsal buffer (:mod:`trainer.learner`), the stream loop under DDP
(:mod:`trainer.loop`, entry point :func:`trainer.loop.run`), evaluation (:mod:`trainer.evaluation`) and
versioned checkpoints with model announcements (:mod:`trainer.checkpoint`). Imports ``buffer`` and the
streamer's frame format (and, for simulated held-out sets only, the simulator).
"""
