"""``python -m ptychosteer.torchrun ARGS``: ``torchrun`` (``torch.distributed.run``, same arguments) that stops when
the ``launch`` supervisor dies.

With ``launcher = "torchrun"`` the supervisor starts torchrun's agent, which starts the trainer ranks: the agent,
not the supervisor, is the ranks' parent. Plain torchrun does not follow the supervisor, so a ``kill -9`` of
``launch`` left the agent and its ranks training on. This entry point first asks for SIGTERM when the supervisor
dies (:func:`streamer.lifeline.follow_supervisor`); torchrun's agent stops its ranks on SIGTERM, and each rank under
torchrun stops with the agent (:func:`trainer.distributed.setup`).
"""

from __future__ import annotations


def main() -> None:
    from streamer.lifeline import follow_supervisor

    follow_supervisor()
    from torch.distributed.run import main as torchrun

    torchrun()


if __name__ == "__main__":
    main()
