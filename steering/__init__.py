"""Steering stage: live reconstruction with the newest model, stitching, quality without ground truth, the
decision policy and the decision feed (:func:`steering.service.run`). Imports the streamer's frame format and the
trainer's model and checkpoint loader only."""
