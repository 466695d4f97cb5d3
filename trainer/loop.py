"""The trainer stage: continual, data-parallel training of PtychoNN on the live stream (``run(config)``).

Each rank pulls frames from the ingest's trainer endpoint (:class:`trainer.stream.FrameReceiver`). Scans are
tasks, in series order. Every iteration all ranks exchange a tiny status vector (frames ready, series seen,
idle time) over a gloo control group and take the *same* decision: train a step (every rank has ``b`` frames
of the current task), close the task (its end is known on some rank — a later series or a ``series_end`` —
and every rank has seen it or waited ``boundary_grace_s``), stop, or wait. That keeps DDP's collectives
matched on an uneven stream. At a task end: scratch retraining, evaluation on rank 0 (simulation), metrics and
figures, a checkpoint and a model-version announcement for steering. With ``catch_up`` (a recording), the
series it holds that this trainer has not trained — missed while it was down — are queued from disk first
(:mod:`trainer.catchup`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from buffer import CupyNccl, SingleProcess, TorchDistributed
from buffer.comm import Comm
from trainer import checkpoint as ckpt
from trainer.config import TrainerConfig
from trainer.data import INPUT_ENCODING, TaskWeight, ptycho_fields, stack_frames
from trainer.physics import load_probe
from trainer.distributed import Dist, any_error, barrier, broadcast_object, gather_status, setup, teardown
from trainer.evaluation import ErrorMatrix, evaluate_regions, plot_matrix, plot_reconstructions, skill_report
from trainer.learner import ContinualLearner
from trainer.models import build_model
from trainer.strategies import ptycho_task
from trainer.stream import FrameReceiver
from trainer.window import TaskWindow

logger = logging.getLogger(__name__)
WARMUP_STEPS = 20  # steps left out of the steady-state throughput (allocation, first-call costs), as in
# scripts/bench_trainer.py's standalone loops
_COLS = ("ready", "lowest", "highest", "ended", "idle_s", "stop", "window", "new_run")


def buffer_comm(kind: str, d: Dist) -> Comm:
    """The rehearsal buffer's communicator (collective: every rank calls it).

    ``torch``: a dedicated ``torch.distributed`` group of the run's backend (none at world size 1);
    ``cupy``: a CuPy NCCL communicator on its own CUDA stream, so buffer traffic overlaps DDP's own NCCL
    all-reduces instead of queueing behind them (used even at world size 1, where it is a loop-back).
    """
    if kind == "cupy":
        return CupyNccl.over_group(d.rank, d.world_size, d.device, d.control)
    return TorchDistributed(d.backend, device=d.device) if d.world_size > 1 else SingleProcess()


def steps_before_next_status(ready_min: int, window_min: int, over: bool, b: int, k: int, continuous: bool) -> int:
    """Steps every rank takes before the next status exchange, from the gathered status (so the same on every
    rank). ``k`` (``status_every_steps``) when each of the next ``k`` exchanges could only decide "step": every
    rank has ``k`` batches of new frames of the task waiting (a backlog: the trainer fed faster than it trains),
    or, continuous, the window is full on every rank and no later series or end has been seen (the steady state
    of a slower stream); otherwise 1. A stop or a task end is noticed up to ``k - 1`` steps later."""
    if ready_min >= k * b or (continuous and window_min >= b and not over):
        return k
    return 1


class StreamTrainer:
    def __init__(self, config: TrainerConfig, d: Dist) -> None:
        self.config, self.d = config, d
        m = config.model
        torch.manual_seed(config.learner.seed)  # the same initial model on every rank
        self.factory = lambda: build_model(dataclasses.asdict(m))
        model = self.factory().to(d.device)
        comm = buffer_comm(config.buffer_comm, d)
        weighted = config.learner.task_weight == "floor"
        fields, outputs = ptycho_fields(m.frame_size, config.learner.loss, weighted)
        self.task_weight = TaskWeight() if weighted else None
        lc = config.learner
        self.learner = ContinualLearner(self._wrap(model), ptycho_task(lc.loss, lc.physics_overlap, lc.physics_anchor,
                                                                            lc.physics_noise),
                                        lc, fields, outputs, comm=comm, device=d.device, model_factory=self.factory)
        if self.task_weight is not None:
            self.learner.weigh = self.task_weight.weigh
        self.out = Path(config.out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.version = ckpt.latest_version(self.ckpt_dir) if d.is_main else 0
        self.version = int(broadcast_object(d, self.version))
        self.matrix = ErrorMatrix()
        self.task_series: list[int] = []
        self.task_end_steps: list[int] = []  # the step count at the end of each task (its steps: the differences)
        self.task_headers: list[str | None] = []  # each task's series header fingerprint (None: not received)
        self.run_first_task = 0  # the first task of the current run (a restarted detector numbers series from 1)
        self.dropped_tail = 0
        self.stop_event = threading.Event()
        self.announcer = ckpt.Announcer(config.announce_endpoint, curve_secret=config.announce_curve_secret,
                                        authorized_keys=config.announce_authorized_keys) \
            if d.is_main and config.announce_endpoint else None
        self._held_cache: dict[int, Any] = {}
        if config.resume:
            self._resume()
        self.window = TaskWindow(config.window_frames, seed=config.learner.seed * 1009 + d.rank)
        self.fresh_samples = 0  # frames taken from the stream (each trains once as new, then from the window)
        self._t_first_step = 0.0
        self._steps_taken = 0
        self._steady: list[tuple[float, int]] = []  # (time, samples) after step WARMUP_STEPS and after the last step
        self.status_exchanges = 0  # the ranks' lockstep all-gathers (config.status_every_steps)
        physics = config.learner.loss == "physics"
        self.probe = load_probe(config.probe_file, m.frame_size) if config.probe_file else None
        self.receiver = FrameReceiver(config.stream_endpoint, prepare=config.preparation, physics=physics,
                                      probe=self.probe, notice_endpoint=config.notice_endpoint)
        # resumed: live frames of the series trained in this run are not queued, unless their header is another
        # arming's (a new run: the detector numbers from 1 again)
        self.receiver.closed.update(self.run_series)
        self.receiver.trained_headers.update({s: h for s, h in self._run_headers().items() if h})
        self.catch_up: dict[str, Any] = self._catch_up() if config.catch_up else {}
        self.receiver.start()
        self._last_ckpt_step = self.learner.step_count
        self.write_status()  # at once: the announce endpoint rank 0 bound (launch waits for it)

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.d.world_size == 1:
            return model
        ids = [self.d.device.index] if self.d.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    @property
    def run_series(self) -> list[int]:
        """The series ids trained in the current run (ids of an earlier run may come again)."""
        return self.task_series[self.run_first_task:]

    def _run_headers(self) -> dict[int, str | None]:
        """{series trained in the current run: its header fingerprint (None: not received)}."""
        return dict(zip(self.run_series, self.task_headers[self.run_first_task:]))

    def _start_new_run(self) -> None:
        """Series ids start over (collective decision: from the gathered status or the broadcast catch-up plan)."""
        if self.d.is_main:
            logger.info("a new run begins after %d tasks (series %s): its series ids are trained as new tasks",
                        len(self.task_series), self.run_series)
        self.run_first_task = len(self.task_series)
        self.receiver.start_new_run()

    @property
    def model(self) -> nn.Module:
        """The trained model (without a DDP wrapper); ``learner.serving_model`` is what is evaluated and served."""
        return self.learner.trained_model

    # ------------------------------------------------------------------ evaluation
    def _sim_config(self) -> Any:
        from streamer.config import SimulatorConfig

        e, m = self.config.eval, self.config.model
        return SimulatorConfig(frame_size=m.frame_size, object_size_px=e.object_size_px, overlap=e.overlap,
                               families=e.families, seed=e.seed, photons_per_frame=e.photons_per_frame,
                               scans=max(1, len(self.task_series)))

    def _held_for(self, task: int, series: int) -> Any:
        """Held-out truth of task ``task`` (series ``series``): the simulated scan its series header names
        (``ptychosteer.scan_index``), else ``series - eval.first_series`` (a header this rank did not get). Series
        ids and scan indices part when the ingest re-numbers a re-armed detector, so the id alone can pick
        another scan's object."""
        if task not in self._held_cache:  # by task: a new run can reuse a series id
            from dataclasses import replace

            from trainer.evaluation import heldout_for

            index, family = self.receiver.scan_identity.get(series, (series - self.config.eval.first_series, None))
            held = replace(heldout_for(self._sim_config(), index, self.config.eval.count), task=task)
            if family is not None and held.name != family:
                logger.warning("evaluation: series %d is scan %d of %s objects, but the [eval] settings (seed, "
                               "families) simulate %s there: its held-out errors compare with another object",
                               series, index, family, held.name)
            self._held_cache[task] = held
        return self._held_cache[task]

    def steps_per_task(self) -> dict[int, int]:
        """{task: training steps taken on it} (each task's steps include its rehearsal of earlier ones); {} after a
        resume from a checkpoint that did not record them."""
        if len(self.task_end_steps) != len(self.task_series):
            return {}
        ends = self.task_end_steps
        return {j: ends[j] - (ends[j - 1] if j else 0) for j in range(len(ends))}

    def _evaluate(self) -> dict[str, Any]:
        if not (self.d.is_main and self.config.eval.enabled):
            return {}
        held = [self._held_for(j, s) for j, s in enumerate(self.task_series)]
        self.matrix.names = {h.task: h.name for h in held}
        model = self.learner.serving_model  # the moving average with ``ema``: what steering gets
        self.matrix.record({h.task: evaluate_regions(model, h, self.d.device) for h in held})
        metrics = self.matrix.metrics()
        skill = skill_report(self.matrix, held)
        floor = skill["full"]["constant_guess"]
        self.matrix.save(self.out / "metrics.json", {"strategy": self.config.learner.strategy,
                                                     "throughput": self._throughput(), "constant_guess": floor,
                                                     "skill": skill, "series": dict(enumerate(self.task_series)),
                                                     "steps_per_task": self.steps_per_task()})
        plot_matrix(self.matrix, self.out / "error_matrix.png", f"{self.config.learner.strategy}: error matrix")
        plot_reconstructions(model, held, self.out / "reconstructions.png", str(self.d.device))
        below = [j for j, e in metrics["final_error"].items() if e < floor[j]]
        return {"average_error": metrics["average_error"], "average_forgetting": metrics["average_forgetting"],
                "constant_guess_average": sum(floor.values()) / len(floor), "tasks_below_constant_guess": below,
                "mean_skill": skill["full"]["mean_skill"],
                "mean_skill_illuminated": skill["illuminated"]["mean_skill"]}

    def _throughput(self) -> dict[str, float]:
        t = self.learner.train_time_s
        wall = time.perf_counter() - self._t_first_step if self._t_first_step else 0.0
        (t0, n0), (t1, n1) = self._steady or [(0.0, 0), (0.0, 0)]
        return {"samples_per_s_per_rank": self.learner.samples_seen / t if t else 0.0,
                "wall_samples_per_s_per_rank": self.learner.samples_seen / wall if wall else 0.0,
                # from the end of step WARMUP_STEPS to the end of the last step: everything between steps (status
                # exchanges, frame decoding, waiting for frames or a peer, earlier task ends) counts; the warm-up
                # and what follows the last step (the final task end, checkpoint, evaluation) do not
                "steady_samples_per_s_per_rank": (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0,
                "steps": self.learner.step_count, "samples_seen_rank0": self.learner.samples_seen,
                "samples_per_frame_rank0": self.samples_per_frame()}

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, metrics: dict[str, Any] | None = None) -> None:
        """Collective: every rank writes its buffer shard, rank 0 commits and announces."""
        self.version += 1
        self.learner.flush()
        buf = self.learner.buffer.state_dict() if self.learner.buffer is not None else None
        staged = self.learner.staged_state()  # insert_at_task_end: this task's candidates, not yet in the buffer
        if buf is not None and staged is not None:
            buf["staged"] = staged
        ckpt.write_shard(self.ckpt_dir, self.version, self.d.rank, buf)
        # the current task's floor so far, over every rank: its buffered samples keep their weight after a resume
        current = gather_status(self.d, list(self.task_weight.totals())).sum(0).tolist() \
            if self.task_weight is not None else [0.0, 0]
        barrier(self.d)
        if self.d.is_main:
            m = self.config.model
            meta = {"step": self.learner.step_count, "task": len(self.task_series), "task_series": self.task_series,
                    "task_end_steps": self.task_end_steps, "task_headers": self.task_headers,
                    "run_first_task": self.run_first_task,
                    "model": {**dataclasses.asdict(m),
                              "prepare": self.config.preparation.to_dict(), "input": INPUT_ENCODING},
                    "strategy": self.config.learner.strategy, "metrics": metrics or {},
                    "matrix_rows": self.matrix.rows_json(),
                    "task_floors": self.task_weight.floors if self.task_weight is not None else [],
                    "task_floor_totals": [current[0], int(current[1])],
                    "world_size": self.d.world_size}
            state = {**self.learner.state(), "model_config": meta["model"]}
            path = ckpt.commit(self.ckpt_dir, self.version, state, meta, self.config.keep_checkpoints)
            if self.announcer:
                self.announcer.announce(path, {"version": self.version, **meta})
            logger.info("checkpoint v%06d at step %d (task %d)", self.version, meta["step"], meta["task"])
        barrier(self.d)
        self._last_ckpt_step = self.learner.step_count

    def _resume(self) -> None:
        path = ckpt.find_resumable(self.ckpt_dir, self.d.world_size) if self.d.is_main else None
        path = broadcast_object(self.d, str(path) if path else "")
        if not path:
            logger.warning("--resume: no usable checkpoint in %s; starting fresh", self.ckpt_dir)
            return
        manifest, state, buf = ckpt.load_version(Path(path), self.d.rank)
        self.learner.load_state(state)
        saved_world = manifest.get("world_size", self.d.world_size)
        if self.learner.buffer is not None and isinstance(saved_world, int) and saved_world != self.d.world_size:
            buf = regroup_shards(Path(path), saved_world, self.d.rank, self.d.world_size, own=buf)
        if self.learner.buffer is not None and buf is not None:
            staged = buf.pop("staged", None)
            if buf:  # (empty: the old shards did not merge, only their staged samples came)
                restore_buffer(self.learner.buffer, buf, path)
            if isinstance(staged, dict):
                self.learner.load_staged(staged, path)
        self.task_series = list(manifest.get("task_series", []))
        self.task_end_steps = list(manifest.get("task_end_steps", []))
        headers, first = manifest.get("task_headers"), manifest.get("run_first_task", 0)
        ok = isinstance(headers, list) and len(headers) == len(self.task_series) and \
            all(h is None or isinstance(h, str) for h in headers)
        self.task_headers = list(headers) if ok else [None] * len(self.task_series)  # older: no arming known
        self.run_first_task = first if type(first) is int and 0 <= first <= len(self.task_series) else 0
        self.matrix.load_rows_json(manifest.get("matrix_rows", []))
        # the replay boost's position in the current task (from the manifest: the same on every rank)
        self.learner.tasks_ended = len(self.task_series)
        last_end = self.task_end_steps[-1] if self.task_end_steps else 0
        self.learner.resume_task_steps(max(0, self.learner.step_count - int(last_end)))
        if self.task_weight is not None:
            self._resume_task_floors(manifest)
        if self.d.is_main:
            logger.info("resumed from %s: step %d, %d tasks done", path, self.learner.step_count,
                        len(self.task_series))

    def _resume_task_floors(self, manifest: dict[str, Any]) -> None:
        """The ended tasks' floors (the buffered samples' weights) and the current task's totals so far (on rank
        0: the next task end sums every rank's) from the manifest. A checkpoint without floors is from before
        per-task floors: its buffer rows hold ``w``, not ``task``, and do not load (:func:`restore_buffer`), so no
        sample refers to those tasks; they get a neutral floor."""
        floors, totals = manifest.get("task_floors"), manifest.get("task_floor_totals")
        done = len(self.task_series)
        if not (isinstance(floors, list) and len(floors) == done and all(isinstance(f, (int, float)) for f in floors)):
            logger.warning("--resume: the checkpoint holds no task floors for its %d tasks; they weigh 1", done)
            floors = [1.0] * done
        ok = isinstance(totals, list) and len(totals) == 2 and all(isinstance(v, (int, float)) for v in totals)
        self.task_weight.restore(floors, (totals[0], int(totals[1])) if ok and self.d.is_main else (0.0, 0))

    def _catch_up(self) -> dict[str, Any]:
        """Queue the frames of the series the recording holds and this trainer has not trained (collective)."""
        from trainer.catchup import CatchUpPlan, load_share, plan, series_configs, series_contexts

        physics = self.config.learner.loss == "physics"
        p = plan(self.config.catch_up, self._run_headers(), labelled_only=not physics) if self.d.is_main else None
        p = CatchUpPlan(**broadcast_object(self.d, vars(p) if p is not None else None))
        if p.new_run:  # the recording is of a new run (its headers are of other armings): nothing in it is trained
            self._start_new_run()
        if p.error:
            if self.d.is_main:
                logger.warning("catch-up: cannot read the recording %s now (%s): training on the live stream "
                               "only", p.path, p.error)
            return {"error": p.error, "replayed_frames": 0, "replayed_series": []}
        if not p.indices:  # nothing recorded that this trainer has not trained (a fresh run: an empty file)
            return {"replayed_frames": 0, "replayed_series": []}
        try:
            frames = load_share(p, self.d.rank, self.d.world_size)
            contexts = series_contexts(p.path, sorted(p.indices), self.config.preparation)
            configs = series_configs(p.path, sorted(p.indices))  # probes, fluxes, which scan each is
            error = ""
        except Exception as exc:  # noqa: BLE001 - as in plan(): a file being written may not read now
            frames, contexts, configs, error = [], {}, {}, f"{type(exc).__name__}: {exc}"
        failed = any_error(self.d, error)
        if failed:  # every rank or none: the ranks must stay in step
            (logger.warning if self.d.is_main else logger.debug)("catch-up: reading the recording failed (%s): training on the live stream only", failed)
            return {"error": failed, "replayed_frames": 0, "replayed_series": []}
        self.receiver.preload(frames, p.frame_ids, p.ended, contexts, configs)
        series = sorted(p.indices)
        if self.d.is_main and series:
            logger.info("catch-up: replaying %d labelled frames of series %s from %s (%d on this rank) before the "
                        "live stream; ended on disk: %s", p.frames, series, p.path, len(frames), p.ended)
        return {"replayed_frames": p.frames, "replayed_series": series}

    # ------------------------------------------------------------------ the loop
    def _status(self, cur: int) -> torch.Tensor:
        r = self.receiver
        self.status_exchanges += 1
        return gather_status(self.d, [r.count(cur) if cur >= 0 else 0, r.lowest_pending(), r.highest_series,
                                      r.ended_series, r.idle_s(),
                                      float(self.stop_event.is_set()), self.window.fill, float(r.new_run)])

    def run(self) -> dict[str, Any]:
        c, b = self.config, self.config.learner.batch_size
        cur, t_log, last_logged, task_start = -1, time.perf_counter(), 0, 0
        while True:
            st = self._status(cur)
            ready, lowest, highest, ended, idle, stop, window, new_run = (st[:, i] for i in range(len(_COLS)))
            if bool(stop.any()):
                break
            if cur < 0:
                if bool(new_run.any()):  # some rank got a header of another arming under a trained id
                    self._start_new_run()
                    continue
                live = lowest[lowest >= 0]
                live = live[~torch.isin(live, torch.tensor(self.run_series, dtype=live.dtype))]
                if len(live):
                    cur, task_start = int(live.min()), self.learner.step_count
                    continue
                if c.idle_timeout_s and bool((idle >= c.idle_timeout_s).all()):
                    logger.info("stream idle for %.0f s on every rank: stopping", c.idle_timeout_s)
                    break
                self.receiver.wait(0.05)
                continue
            # a new run (a rank got a header of another arming under a trained id) ends the last run's task too
            fresh = bool(new_run.any())
            over = bool((highest > cur).any() or (ended >= cur).any()) or fresh
            each = (highest > cur) | (ended >= cur) | (idle >= c.boundary_grace_s) | fresh
            boundary = over and bool(each.all())
            # every rank steps together: b new frames each, or (continuous) what has arrived plus window samples,
            # also to use up the last frames of a task before its end
            young = self.learner.step_count - task_start < c.min_steps_per_task  # every rank: the same count
            held = boundary and self._hold(cur, lowest, highest, idle)
            if int(ready.min()) >= b or (c.continuous and int(window.min()) >= b
                                         and (not boundary or int(ready.max()) > 0 or young or held)):
                steps = steps_before_next_status(int(ready.min()), int(window.min()), over, b,
                                                 c.status_every_steps, c.continuous)
                for _ in range(steps):
                    terms = self._step(cur)
                    if self.d.is_main and self.learner.step_count - last_logged >= c.log_every_steps:
                        last_logged = self._log(terms, cur, t_log)
                    if c.checkpoint_every_steps and \
                            self.learner.step_count - self._last_ckpt_step >= c.checkpoint_every_steps:
                        self.checkpoint()  # collective: every rank is at the same step
                continue
            if boundary:
                if self._end_task(cur):
                    break
                cur = -1
                continue
            self.receiver.wait(0.05)
        return self._finish()

    def _hold(self, cur: int, lowest: torch.Tensor, highest: torch.Tensor, idle: torch.Tensor) -> bool:
        """Keep training on task ``cur`` after its end (continuous, ``hold_task``): while another task is expected
        (a later series was seen, or ``max_tasks`` says more come) but none has frames waiting, and a message came
        within ``idle_timeout_s`` (60 s when that is 0). A labeler's labels come a scan and its reconstruction after
        the scan; the ranks train on the window meanwhile instead of waiting for them. From the gathered status: the
        same answer on every rank."""
        c = self.config
        if not (c.continuous and c.hold_task):
            return False
        waiting = bool(((lowest >= 0) & (lowest != cur)).any())  # another series' frames: go on to them
        more = bool((highest > cur).any()) or bool(c.max_tasks and len(self.task_series) + 1 < c.max_tasks)
        return more and not waiting and bool((idle < (c.idle_timeout_s or 60.0)).any())

    def _step(self, cur: int) -> dict[str, float]:
        """One step: up to b new frames of task ``cur``, the rest of the b rows from the task's window."""
        b = self.config.learner.batch_size
        frames = self.receiver.take(cur, b)
        parts = []
        if frames:
            batch = stack_frames(frames, *((self.receiver.probes, self.receiver.fluxes) if self.receiver.physics
                                           else (None, None)))
            self.fresh_samples += len(frames)
            if self.task_weight is not None:
                batch = self.task_weight.add(batch)
            if self.config.continuous:
                self.window.add(batch)
            parts.append(batch)
        if len(frames) < b:
            parts.append(self.window.sample(b - len(frames)))
        batch = parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        self._t_first_step = self._t_first_step or time.perf_counter()
        terms = self.learner.step(batch, fresh=len(frames))
        self._steps_taken += 1  # by this process (a resumed learner's step count starts at its checkpoint's)
        mark = (time.perf_counter(), self.learner.samples_seen)
        if self._steps_taken == WARMUP_STEPS:
            self._steady = [mark, mark]
        elif self._steady:
            self._steady[1] = mark
        return terms

    def samples_per_frame(self) -> float:
        """Training samples (new rows, window rows and replayed ones) per frame taken from the stream."""
        rows = self.learner.samples_seen + self.learner.replayed_rows
        return rows / self.fresh_samples if self.fresh_samples else 0.0

    def write_status(self, **extra: Any) -> None:
        if self.d.is_main and self.config.status_path:
            from streamer.status import write_status

            buf = self.learner.buffer
            write_status(self.config.status_path, "trainer", {
                **self._throughput(), "tasks": self.task_series, "version": self.version,
                "world_size": self.d.world_size, "strategy": self.config.learner.strategy,
                "buffer_fill_rank0": buf.fill if buf is not None else 0,
                "frames_received_rank0": self.receiver.received, "unlabelled_rank0": self.receiver.unlabelled,
                "stream_lag_s": self.receiver.lag_s, "loss": self.learner.losses[-1] if self.learner.losses else None,
                "announce_endpoint": self.announcer.endpoint if self.announcer else "",
                "catch_up": self.catch_up, "duplicates_dropped_rank0": self.receiver.duplicates,
                "without_header_rank0": self.receiver.without_header,
                "held_for_header_rank0": self.receiver.held_for_header,
                "without_probe_rank0": self.receiver.without_probe,
                "late_for_closed_task_rank0": self.receiver.late_for_closed_task,
                "armings_mixed_rank0": self.receiver.armings_mixed,
                **extra})

    def _log(self, terms: dict[str, float], cur: int, t0: float) -> int:
        tp = self._throughput()
        self.write_status(task=cur)
        logger.info("task %d step %d loss %.4f (%s) %.1f samples/s/rank, %.1f training samples per arriving frame, "
                    "stream lag %.2f s, unlabelled %d", cur, self.learner.step_count, terms["loss"],
                    ", ".join(f"{k} {v:.4f}" for k, v in terms.items() if k not in ("loss", "replayed")),
                    tp["samples_per_s_per_rank"], tp["samples_per_frame_rank0"], self.receiver.lag_s,
                    self.receiver.unlabelled)
        return self.learner.step_count

    def _end_task(self, series: int) -> bool:
        self.dropped_tail += self.receiver.discard(series)  # fewer than b left on some rank
        self.window.clear()
        if self.task_weight is not None:  # the floor over every rank's labels: the same weights on every rank
            total, frames = gather_status(self.d, list(self.task_weight.totals())).sum(0).tolist()
            floor = self.task_weight.end_task((total, int(frames)))
            if self.d.is_main:
                logger.info("task weight of series %d: 1 / %.4f (its labels' constant-guess error, %d frames over "
                            "%d ranks)", series, floor, frames, self.d.world_size)
        self.task_series.append(series)
        self.task_end_steps.append(self.learner.step_count)
        self.task_headers.append(self.receiver.fingerprints.get(series))
        self.learner.end_task(wrap=self._wrap)
        metrics = self._evaluate()
        if self.d.is_main:
            logger.info("task %d (series %d) done at step %d: %s", len(self.task_series) - 1, series,
                        self.learner.step_count, metrics)
        self.checkpoint(metrics)
        self.write_status(last_task_metrics=metrics)
        return bool(self.config.max_tasks and len(self.task_series) >= self.config.max_tasks)

    def _finish(self) -> dict[str, Any]:
        if self.learner.step_count > self._last_ckpt_step:
            self.checkpoint()
        summary = {"rank": self.d.rank, "steps": self.learner.step_count, "tasks": self.task_series,
                   "status_exchanges": self.status_exchanges,
                   "frames_received": self.receiver.received, "unlabelled": self.receiver.unlabelled,
                   "malformed": self.receiver.malformed, "dropped_tail": self.dropped_tail, "version": self.version,
                   "replayed": self.receiver.replayed, "duplicates_dropped": self.receiver.duplicates,
                   "late_for_closed_task": self.receiver.late_for_closed_task,
                   "armings_mixed": self.receiver.armings_mixed,
                   "loss_first": _mean(self.learner.losses[:5]), "loss_last": _mean(self.learner.losses[-5:]),
                   **self._throughput()}
        if self.config.eval.enabled and self.matrix.rows and self.d.is_main:
            summary["metrics"] = self.matrix.metrics()
        self.write_status(done=True, metrics=summary.get("metrics"))
        return summary

    def close(self) -> None:
        self.receiver.close()
        self.learner.close()
        if self.announcer:
            self.announcer.close()


def regroup_shards(path: Path, saved_world: int, rank: int, world: int,
                   own: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """A checkpoint of ``saved_world`` ranks resumed on ``world``: this rank takes the old ranks ``rank``,
    ``rank + world``, … (on more ranks than before, the new ranks take none and refill from the stream), merged
    into one state that :func:`restore_buffer` resizes into this rank's capacity. ``own``: old rank ``rank``'s
    shard, already loaded (not read twice)."""
    from buffer import merge_states

    shards = []
    for k in range(rank, saved_world, world):
        try:
            shard = own if k == rank and own is not None else ckpt.load_shard(path, k)
        except Exception as exc:  # noqa: BLE001 - as find_resumable: a shard that does not load is not used
            logger.warning("--resume: the buffer shard of old rank %d in %s does not load (%s: %s); left out", k,
                           path, type(exc).__name__, exc)
            continue
        if shard is not None:
            shards.append(shard)
    if not shards:
        logger.warning("--resume: %s was written by %d ranks, this run has %d: rank %d holds no old buffer shard "
                       "and starts with an empty buffer", path, saved_world, world, rank)
        return None
    staged = [s.pop("staged") for s in shards if isinstance(s.get("staged"), dict)]
    try:
        merged = merge_states(shards)
        logger.info("--resume: %s was written by %d ranks, this run has %d: rank %d takes the buffer shards of old "
                    "ranks %s", path, saved_world, world, rank, list(range(rank, saved_world, world)))
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("--resume: the buffer shards in %s do not merge (%s); rank %d starts with an empty buffer",
                       path, exc, rank)
        if not staged:
            return None
        merged = {}  # the staged candidates (rows of their own) may still fit: only they are handed on
    if staged:  # insert_at_task_end: the old ranks' candidates for the current task (the learner subsamples)
        try:
            keys = set.intersection(*(set(s_["rows"]) for s_ in staged))
            merged["staged"] = {"rows": {k: torch.cat([s_["rows"][k] for s_ in staged]) for k in sorted(keys)},
                                "seen": sum(int(s_["seen"]) for s_ in staged)}
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            logger.warning("--resume: the staged samples in %s do not merge (%s: %s); left out", path,
                           type(exc).__name__, exc)
    return merged


def restore_buffer(buffer: Any, state: dict[str, Any], source: str) -> bool:
    """Load a checkpoint's rehearsal-buffer shard (one saved with another capacity is resized: see
    ``RehearsalBuffer.load_state_dict``); one saved with other fields or another policy (e.g. before
    ``task_weight`` was switched on, or with the per-sample weights ``w`` of before per-task floors) leaves the
    buffer empty with a warning instead of stopping the resume: the model and optimizer still continue, and the
    buffer refills from the stream."""
    try:
        buffer.load_state_dict(state)
        return True
    except (ValueError, KeyError) as exc:
        logger.warning("--resume: the rehearsal buffer saved in %s does not fit this configuration (%s); it starts "
                       "empty", source, exc)
        return False


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def run(config: TrainerConfig) -> dict[str, Any]:
    """Stage entry point for one rank (under torchrun, ``--nproc`` spawn, or alone)."""
    d = setup(config.backend, os.environ.get("PTYCHOSTEER_INIT_METHOD"))
    try:
        trainer = StreamTrainer(config, d)
    except BaseException:
        teardown()  # e.g. a buffer communicator that cannot start: leave no process group behind
        raise
    previous = {}
    if threading.current_thread() is threading.main_thread():  # SIGINT/SIGTERM: finish the step, checkpoint, exit
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: trainer.stop_event.set())
    try:
        return trainer.run()
    finally:
        trainer.close()
        teardown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
