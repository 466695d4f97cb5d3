"""``ptychosteer launch``: the whole pipeline from one config, as supervised processes.

Each stage runs as its own process (``python -m ptychosteer.cli <stage> …``) in its own process group, with its
log in ``<workdir>/logs/<stage>.log`` and its counters in ``<workdir>/status/<stage>.json``.

Ports: a stage binds what it serves itself. A port configured as 0 is bound as ``tcp://host:0`` (the OS picks a
free one) and the stage reports the endpoint it holds in its status file; the supervisor starts a stage that
connects to it only after that report, so no port number is ever handed out that nobody holds. Start order: the
simulator (it binds the detector endpoint, as an EIGER does, and waits for a go line on its standard input),
the ingest (connects to the detector; binds the trainer and live endpoints), the trainer ranks (bind the model
announcements), steering (binds the decision feed); once the ingest reports every trainer rank and the steering
subscriber connected, the simulator gets its go line with the feed to ``--follow`` (closing the loop).

A stage that exits non-zero is reported with its exit status and last log lines; the trainer is restarted with
``--resume`` (``on_failure = "restart"``) or the pipeline shuts down. Every stage stops when the supervisor dies
(:mod:`streamer.lifeline`). SIGINT/SIGTERM stop every stage (SIGTERM to each process group, SIGKILL after a grace
period): no orphans, and the ingest closes its HDF5 file intact.
"""

from __future__ import annotations

import dataclasses
import logging
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from streamer.lifeline import SUPERVISOR_ENV
from streamer.status import read_status
from trainer.config import TrainerConfig

logger = logging.getLogger(__name__)
STAGES = ("ingest", "trainer", "steering", "simulator")


@dataclass(frozen=True, kw_only=True)
class SimulatorSection:
    enabled: bool = True
    scans: int = 4
    frame_size: int = 64
    rate_hz: float = 300.0
    object_size_px: int = 192
    overlap: float = 0.6
    seed: int = 0
    families: tuple[str, ...] = ("particles", "cells", "lithography", "textures")
    follow: bool = True  # act on steering decisions
    follow_wait_s: float = 3.0

    def __post_init__(self) -> None:
        from streamer.config import SimulatorConfig

        if self.follow_wait_s < 0:
            raise ValueError(f"follow_wait_s must be >= 0, got {self.follow_wait_s}")
        if not all(isinstance(f, str) for f in self.families):
            raise ValueError(f"families must be names, got {list(self.families)}")
        # the simulator's own validation, with its ranges, before any stage starts
        SimulatorConfig(scans=self.scans, frame_size=self.frame_size, rate_hz=self.rate_hz,
                        object_size_px=self.object_size_px, overlap=self.overlap, seed=self.seed,
                        families=self.families)


@dataclass(frozen=True, kw_only=True)
class LabelerSection:
    """Labels from iterative reconstructions instead of the simulator's ground truth (``ptychosteer label``): the
    simulator sends no labels, the trainers take their frames from the labeler, which reconstructs each series
    from the recording as it completes."""

    enabled: bool = False
    algorithm: str = "lsqml"
    iterations: int = 50
    device: str = "cpu"
    steps_per_task: int = 300  # the trainers' min_steps_per_task: a scan's labels arrive at once, not over its scan
    hold: bool = True  # the trainers' hold_task: they keep training on a labelled scan until the next one's labels
    threads: int = 1  # the labeler's intra-op threads on the CPU (it shares the machine with the trainer ranks)

    def __post_init__(self) -> None:
        from trainer.iterative import EngineConfig

        if self.steps_per_task < 0 or self.threads < 0:
            raise ValueError(f"[labeler] steps_per_task and threads must be >= 0, got {self.steps_per_task}, "
                             f"{self.threads}")
        EngineConfig(algorithm=self.algorithm, iterations=self.iterations, device=self.device)  # its own checks


@dataclass(frozen=True, kw_only=True)
class Ports:
    """0: the stage binds a port the OS picks and reports it; a fixed port that is taken is an error before
    anything starts."""

    detector: int = 0
    train: int = 0
    live: int = 0
    announce: int = 0
    feed: int = 0
    label: int = 0
    notice: int = 0  # the ingest's series notices to every trainer rank
    label_notice: int = 0  # the labeler's
    metrics: int = 0  # with metrics = true: Prometheus scrapes http(s)://<metrics_host or host>:<port>/metrics

    def __post_init__(self) -> None:
        for name, port in dataclasses.asdict(self).items():
            if not 0 <= port <= 65535:
                raise ValueError(f"{name} = {port}: a port is 0 (the OS picks one) or 1..65535")


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    workdir: str = "runs/pipeline"
    host: str = "127.0.0.1"
    detector_endpoint: str = ""  # a real detector to connect to (then [simulator] enabled = false)
    ports: Ports = field(default_factory=Ports)
    simulator: SimulatorSection = field(default_factory=SimulatorSection)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    nproc: int = 2  # trainer ranks on this node
    launcher: str = "spawn"  # spawn (ptychosteer train --nproc) | torchrun
    steering: bool = True
    labeler: LabelerSection = field(default_factory=LabelerSection)
    steering_max_lag_ms: float = 100.0  # steering's latency budget (ptychosteer steer --max-lag-ms)
    steering_keep_ended_scans: int = 8  # ended scans steering keeps in memory (ptychosteer steer --keep-ended-scans)
    on_failure: str = "shutdown"  # shutdown | restart (trainer only; resumes from its newest checkpoint)
    max_restarts: int = 2
    startup_timeout_s: float = 120.0
    grace_s: float = 10.0
    insecure: bool = False  # allow a non-loopback host: frames, models and decisions unauthenticated on it
    # replace <workdir>/recording.h5 if an earlier run left one (else launch refuses to start: its frames are kept)
    overwrite_recording: bool = False
    curve: bool = False  # the decision feed and the model announcements on CURVE, keys made in <workdir>/keys
    curve_clients: str = ""  # with curve: a folder of public keys (*.key) also allowed on the feed (subscribers)
    # every stage's counters as Prometheus gauges (ptychosteer metrics), served on [ports] metrics at host
    metrics: bool = False
    metrics_textfile: str = ""  # and/or written to this file for node_exporter's textfile collector
    # where the exporter listens ("": host). Prometheus on another node scrapes it while the stages stay on
    # loopback; an address other than loopback needs mutual TLS (the three files, PEM) or insecure
    metrics_host: str = ""
    metrics_tls_cert: str = ""
    metrics_tls_key: str = ""
    metrics_client_ca: str = ""  # only scrapers with a client certificate this CA signed are answered

    def __post_init__(self) -> None:
        if self.launcher not in ("spawn", "torchrun"):
            raise ValueError(f"launcher must be spawn or torchrun, got {self.launcher!r}")
        if self.on_failure not in ("shutdown", "restart"):
            raise ValueError(f"on_failure must be shutdown or restart, got {self.on_failure!r}")
        if self.nproc < 1:
            raise ValueError("nproc must be >= 1")
        if self.curve_clients and not (self.curve and Path(self.curve_clients).is_dir()):
            raise ValueError(f"curve_clients = {self.curve_clients!r} needs curve = true and an existing folder")
        if self.max_restarts < 0 or self.grace_s < 0 or self.startup_timeout_s <= 0:
            raise ValueError(f"max_restarts ({self.max_restarts}) and grace_s ({self.grace_s}) must be >= 0, "
                             f"startup_timeout_s ({self.startup_timeout_s}) > 0")
        from streamer.netsec import check_bind

        check_bind(f"tcp://{self.host}:0", "the pipeline's host (every stage binds on it), e.g.",
                   insecure=self.insecure)
        self._check_metrics()
        if not 0 < self.steering_max_lag_ms <= 3_600_000:
            raise ValueError(f"steering_max_lag_ms must be in (0, 3600000], got {self.steering_max_lag_ms}")
        if self.steering_keep_ended_scans < 1:
            raise ValueError(f"steering_keep_ended_scans must be >= 1, got {self.steering_keep_ended_scans}")
        if not self.simulator.enabled and not self.detector_endpoint:
            raise ValueError("with [simulator] enabled = false, set detector_endpoint to the real detector")
        # a frame_size other than the simulator's is fine for training (frames are cut to the model:
        # [trainer.prepare]), not for the held-out sets, which are simulated at the model's frame size
        if (self.trainer.model.frame_size != self.simulator.frame_size and self.simulator.enabled
                and self.trainer.eval.enabled):
            raise ValueError(f"trainer.model.frame_size {self.trainer.model.frame_size} differs from the "
                             f"simulator's frame_size {self.simulator.frame_size}: the trainers cut frames to the "
                             "model ([trainer.prepare]), but the held-out sets are simulated at the model's size; "
                             "set [trainer.eval] enabled = false")

    def _check_metrics(self) -> None:
        tls = {"metrics_tls_cert": self.metrics_tls_cert, "metrics_tls_key": self.metrics_tls_key,
               "metrics_client_ca": self.metrics_client_ca}
        if bool(self.metrics_tls_cert) != bool(self.metrics_tls_key) or (self.metrics_client_ca
                                                                          and not self.metrics_tls_cert):
            raise ValueError("metrics_tls_cert and metrics_tls_key go together, and metrics_client_ca needs them")
        for key, path in tls.items():
            if path and not Path(path).is_file():
                raise ValueError(f"{key} = {path!r} is not a file")
        if (self.metrics_host or any(tls.values())) and not self.metrics:
            raise ValueError("metrics_host and the metrics TLS files need metrics = true (the HTTP exporter)")
        if self.metrics:
            from streamer.netsec import check_bind

            check_bind(f"tcp://{self.metrics_host or self.host}:0", "metrics_host (the Prometheus exporter), e.g.",
                       authenticated=bool(self.metrics_client_ca), insecure=self.insecure)


def check_fixed_ports(config: PipelineConfig) -> None:
    """A clear error before anything starts for a configured (non-zero) port that is taken.

    This only checks: the port stays the stage's to bind. Zeros are not resolved here (a number chosen now and
    bound later can be taken in between); each stage binds port 0 itself and reports what it got.
    """
    for name, port in dataclasses.asdict(config.ports).items():
        if not port:
            continue
        host = config.metrics_host or config.host if name == "metrics" else config.host
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError as exc:
                raise ValueError(f"port {port} for {name} on {host} is not available: {exc}") from exc


def check_machine(config: PipelineConfig) -> None:
    """What the config asks of this machine, before anything starts: a writable workdir without an earlier run's
    recording (unless overwrite_recording), CUDA for NCCL."""
    work = Path(config.workdir)
    try:
        work.mkdir(parents=True, exist_ok=True)
        probe = work / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"workdir {config.workdir!r} is not a writable folder: {exc}") from exc
    if (work / "recording.h5").exists() and not config.overwrite_recording:
        raise ValueError(f"{work / 'recording.h5'} exists (an earlier run's recording): launch never overwrites a "
                         f"recording; use another workdir, move the file away, or set overwrite_recording = true")
    if config.trainer.backend == "nccl" or config.trainer.buffer_comm == "cupy":
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"[trainer] backend = {config.trainer.backend!r} / buffer_comm = "
                             f"{config.trainer.buffer_comm!r} need CUDA, and this machine has no CUDA device")


# which stage binds each endpoint, and the key of its status file that reports the bound address
BOUND_BY = {"detector": ("simulator", "endpoint"), "train": ("ingest", "train_endpoint"),
            "live": ("ingest", "live_endpoint"), "announce": ("trainer", "announce_endpoint"),
            "feed": ("steering", "feed_endpoint"), "label": ("labeler", "endpoint"),
            "notice": ("ingest", "notice_endpoint"), "label_notice": ("labeler", "notice_endpoint"),
            "metrics": ("metrics", "endpoint")}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(obj: Any, table: str) -> str:
    """A (nested) dataclass as TOML tables."""
    lines, nested = [f"[{table}]"], []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            nested.append(to_toml(value, f"{table}.{f.name}"))
        elif isinstance(value, dict):  # a free-form table (e.g. [trainer.prepare]); None values are left out
            nested.append("\n".join([f"[{table}.{f.name}]"] + [f"{k} = {_toml_value(v)}" for k, v in value.items()
                                                                if v is not None]) + "\n\n")
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n\n" + "".join(nested)


class Pipeline:
    def __init__(self, config: PipelineConfig, progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.config = config
        self.work = Path(config.workdir)
        check_fixed_ports(config)
        check_machine(config)
        # endpoints known so far: the fixed ports now, the others once the stage that binds them reports them
        self.endpoints = {name: f"tcp://{config.host}:{port}"
                          for name, port in dataclasses.asdict(config.ports).items() if port and name != "metrics"}
        self._endpoint_known = {name: threading.Event() for name in BOUND_BY}
        for name in self.endpoints:
            self._endpoint_known[name].set()
        self.procs: dict[str, subprocess.Popen] = {}
        self.exit_codes: dict[str, int] = {}
        self.restarts = 0
        self.failure = ""
        self.stop_event = threading.Event()
        self._progress = progress
        self._logs: dict[str, Any] = {}

    def ep(self, name: str) -> str:
        """The endpoint ``name`` is served at (KeyError until the stage that binds it has reported it)."""
        return self.endpoints[name]

    def wait_endpoint(self, name: str, timeout_s: float | None = None) -> str | None:
        """Block until the stage that binds ``name`` has reported it (for a client of a running pipeline)."""
        return self.endpoints.get(name) if self._endpoint_known[name].wait(timeout_s) else None

    def _bind_ep(self, name: str) -> str:
        """What the stage that serves ``name`` binds: the fixed port, or port 0 (the OS picks, the stage reports)."""
        return self.endpoints.get(name) or f"tcp://{self.config.host}:0"

    def status_file(self, stage: str) -> str:
        return str(self.work / "status" / f"{stage}.json")

    def make_keys(self) -> Path:
        """CURVE certificates for ``curve = true`` in ``<workdir>/keys``: a server pair for the feed and one for the
        announcements, a client pair for steering (authorised on the announcements) and for the simulator
        (authorised on the feed, with the public keys of ``curve_clients``). Subscribe with ``--server-key
        <workdir>/keys/feed.key`` and a client certificate whose public key is in ``curve_clients``."""
        import shutil

        import zmq.auth

        keys = self.work / "keys"
        for folder in ("feed-clients", "announce-clients"):
            (keys / folder).mkdir(parents=True, exist_ok=True)
        for name in ("feed", "announce", "steering", "simulator"):
            if not (keys / f"{name}.key_secret").exists():
                zmq.auth.create_certificates(str(keys), name)
        shutil.copy(keys / "simulator.key", keys / "feed-clients" / "simulator.key")
        shutil.copy(keys / "steering.key", keys / "announce-clients" / "steering.key")
        for public in Path(self.config.curve_clients).glob("*.key") if self.config.curve_clients else ():
            shutil.copy(public, keys / "feed-clients" / public.name)
        return keys

    def _curve_args(self, stage: str) -> list[str]:
        if not self.config.curve:
            return []
        k = self.work / "keys"
        if stage == "steering":
            return ["--curve-secret", str(k / "feed.key_secret"), "--authorized-keys", str(k / "feed-clients"),
                    "--models-server-key", str(k / "announce.key"),
                    "--models-client-cert", str(k / "steering.key_secret")]
        if stage == "simulator" and self.config.simulator.follow and self.config.steering:
            return ["--follow-server-key", str(k / "feed.key"), "--follow-client-cert", str(k / "simulator.key_secret")]
        return []

    # ------------------------------------------------------------------ commands
    def command(self, stage: str) -> list[str]:
        """The command line of one stage; the endpoints it connects to must be known by now."""
        c, py = self.config, [sys.executable, "-m", "ptychosteer.cli"]
        scans = c.simulator.scans if c.simulator.enabled else 0
        insecure = ["--insecure"] if c.insecure else []
        if stage == "simulator":
            s = c.simulator
            return py + ["simulate", "--endpoint", self._bind_ep("detector"), "--scans", str(s.scans),
                         "--frame-size", str(s.frame_size), "--rate-hz", str(s.rate_hz),
                         "--object-size", str(s.object_size_px), "--overlap", str(s.overlap), "--seed", str(s.seed),
                         "--families", ",".join(s.families), "--follow-wait", str(s.follow_wait_s), "--wait-for-go",
                         "--status-file", self.status_file("simulator")] + insecure + self._curve_args(stage) + (
                # no ground truth: labels come from the labeler, or none are needed (the physics loss)
                ["--no-labels"] if c.labeler.enabled or c.trainer.learner.loss == "physics" else [])
        if stage == "metrics":  # reads the status files only: an HTTP server on metrics_host (else the pipeline's)
            tls = [arg for option, path in (("--tls-cert", c.metrics_tls_cert), ("--tls-key", c.metrics_tls_key),
                                            ("--client-ca", c.metrics_client_ca)) if path for arg in (option, path)]
            return py + ["metrics", str(self.work), "--host", c.metrics_host or c.host,
                         "--status-file", self.status_file("metrics")] + (
                ["--port", str(c.ports.metrics)] if c.metrics else []) + (
                ["--textfile", c.metrics_textfile] if c.metrics_textfile else []) + tls + (
                insecure if not c.metrics_client_ca else [])
        if stage == "ingest":
            detector = c.detector_endpoint or self.ep("detector")
            return py + ["ingest", "--detector", detector, "--output", str(self.work / "recording.h5"),
                         *(["--overwrite"] if c.overwrite_recording else []),
                         "--train-endpoint", "" if c.labeler.enabled else self._bind_ep("train"),
                         "--notice-endpoint", "" if c.labeler.enabled else self._bind_ep("notice"),
                         "--live-endpoint", self._bind_ep("live"),
                         "--max-series", str(scans), "--stats-interval", "0.5",
                         "--status-file", self.status_file("ingest")] + insecure
        if stage == "trainer":
            # a restarted trainer binds the announce port its first instance had: steering is connected to it
            trainer = dataclasses.replace(c.trainer,
                                          stream_endpoint=self.ep("label" if c.labeler.enabled else "train"),
                                          notice_endpoint=self.ep("label_notice" if c.labeler.enabled
                                                                  else "notice"),
                                          announce_endpoint=self._bind_ep("announce"),
                                          insecure=c.insecure or c.trainer.insecure,
                                          announce_curve_secret=str(self.work / "keys" / "announce.key_secret")
                                          if c.curve else c.trainer.announce_curve_secret,
                                          announce_authorized_keys=str(self.work / "keys" / "announce-clients")
                                          if c.curve else c.trainer.announce_authorized_keys,
                                          out_dir=str(self.work / "train"), max_tasks=scans or c.trainer.max_tasks,
                                          # a restarted trainer first trains on the series it missed, from disk
                                          catch_up=str(self.work / "recording.h5"),
                                          min_steps_per_task=c.labeler.steps_per_task if c.labeler.enabled
                                          else c.trainer.min_steps_per_task,
                                          hold_task=c.labeler.hold if c.labeler.enabled else c.trainer.hold_task)
            toml = self.work / "trainer.toml"
            toml.write_text(to_toml(trainer, "trainer"))
            train_args = ["train", "--config", str(toml), "--status-file", self.status_file("trainer")]
            if c.launcher == "torchrun":
                # one node: --standalone lets the rendezvous take a free port (none fixed); the wrapper stops
                # torchrun's agent, and with it the ranks, when this supervisor dies
                return [sys.executable, "-m", "ptychosteer.torchrun", "--standalone", f"--nproc-per-node={c.nproc}",
                        "-m", "ptychosteer.cli"] + train_args
            return py + train_args + ["--nproc", str(c.nproc)]
        if stage == "steering":
            return py + ["steer", "--live", self.ep("live"), "--models", self.ep("announce"),
                         "--feed", self._bind_ep("feed"), "--out-dir", str(self.work / "steering"),
                         "--models-dir", str(self.work / "train" / "checkpoints"),
                         "--max-scans", str(scans), "--picture-interval", "5",
                         "--max-lag-ms", str(c.steering_max_lag_ms),
                         "--keep-ended-scans", str(c.steering_keep_ended_scans),
                         "--recording", str(self.work / "recording.h5"),
                         "--status-file", self.status_file("steering")] + insecure + self._curve_args(stage)
        if stage == "labeler":
            lab = c.labeler
            return py + ["label", "--recording", str(self.work / "recording.h5"), "--endpoint", self._bind_ep("label"),
                         "--notice-endpoint", self._bind_ep("label_notice"),
                         "--algorithm", lab.algorithm, "--iterations", str(lab.iterations), "--device", lab.device,
                         "--max-series", str(scans), "--threads", str(lab.threads),
                         "--status-file", self.status_file("labeler")] + insecure
        raise ValueError(f"unknown stage {stage!r}")

    def stages(self) -> list[str]:
        """The stages of this pipeline in start order."""
        c = self.config
        return (["metrics"] if c.metrics or c.metrics_textfile else []) + (
            ["simulator"] if c.simulator.enabled else []) + ["ingest"] + (
            ["labeler"] if c.labeler.enabled else []) + ["trainer"] + (["steering"] if c.steering else [])

    def _binds(self, stage: str) -> list[str]:
        """The endpoints ``stage`` binds in this pipeline (with a labeler, the ingest serves no trainers)."""
        names = [name for name, (by, _) in BOUND_BY.items() if by == stage]
        return [n for n in names if not (n in ("train", "notice") and self.config.labeler.enabled)
                and not (n == "metrics" and not self.config.metrics)]

    # ------------------------------------------------------------------ processes
    def _start(self, stage: str, cmd: list[str]) -> None:
        if stage in self._logs:  # a restart: the previous instance's log handle
            self._logs[stage].close()
        log = open(self.work / "logs" / f"{stage}.log", "ab")
        self._logs[stage] = log
        env = os.environ | {"PYTHONUNBUFFERED": "1", SUPERVISOR_ENV: str(os.getpid())}  # see streamer.lifeline
        stdin = subprocess.PIPE if stage == "simulator" else subprocess.DEVNULL  # its go line comes on stdin
        self.procs[stage] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=stdin,
                                             start_new_session=True, env=env)
        logger.info("started %s (pid %d): %s", stage, self.procs[stage].pid, " ".join(cmd))

    def _await_endpoints(self, stage: str) -> None:
        """Wait until ``stage`` reports every endpoint it binds (status file), a failure, a stop or the timeout."""
        names = self._binds(stage)
        deadline = time.monotonic() + self.config.startup_timeout_s
        while not self.stop_event.is_set() and not self.failure:
            body = read_status(self.work / "status").get(stage, {})
            for name in names:
                if body.get(BOUND_BY[name][1]):
                    self.endpoints[name] = body[BOUND_BY[name][1]]
                    self._endpoint_known[name].set()
            if all(name in self.endpoints for name in names):
                return
            self._check()
            if stage in self.exit_codes:  # it died (the exporter: logged, the pipeline goes on; others: failure)
                return
            if time.monotonic() > deadline:
                self.failure = (f"{stage} did not report its endpoints ({', '.join(names)}) within "
                                f"{self.config.startup_timeout_s:.0f} s; last log lines:\n{self.tail(stage)}")
            else:
                self.stop_event.wait(0.1)

    def _go(self) -> None:
        """Let the simulator stream: one JSON line on its standard input (with the feed to follow)."""
        proc = self.procs["simulator"]
        line = {"follow": self.ep("feed")} if self.config.simulator.follow and self.config.steering else {}
        try:
            proc.stdin.write((json.dumps(line) + "\n").encode())
            proc.stdin.close()
        except (BrokenPipeError, OSError):  # it died meanwhile: _check reports its exit status
            pass

    def tail(self, stage: str, lines: int = 15) -> str:
        try:
            return "\n".join((self.work / "logs" / f"{stage}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        want_subs = 1 if self.config.steering else 0
        while not self.stop_event.is_set():
            status = read_status(self.work / "status")
            st = status.get("ingest", {})
            feeding = status.get("labeler", {}) if self.config.labeler.enabled else st  # who the trainers pull from
            ranks = min(feeding.get("trainer_peers", 0), feeding.get("notice_subscribers", 0))  # frames, headers
            if ranks >= self.config.nproc and st.get("live_subscribers", 0) >= want_subs:
                return
            self._check()
            if self.failure:
                return
            if time.monotonic() > deadline:
                self.failure = (f"stages not ready after {self.config.startup_timeout_s:.0f} s (trainer ranks "
                                f"connected: {feeding.get('trainer_peers', 0)}/{self.config.nproc}, subscribed "
                                f"to the notices: {feeding.get('notice_subscribers', 0)}/{self.config.nproc}, "
                                f"{st.get('live_subscribers', 0)} live subscribers)")
                return
            self.stop_event.wait(0.2)

    def _check(self) -> None:
        for stage, proc in list(self.procs.items()):
            rc = proc.poll()
            if rc is None or stage in self.exit_codes:
                continue
            self.exit_codes[stage] = rc
            if rc == 0:
                logger.info("%s finished", stage)
                continue
            report = f"{stage} exited with status {rc}; last log lines:\n{self.tail(stage)}"
            if stage == "metrics":  # monitoring: its end does not stop an experiment
                logger.error("%s\nthe pipeline goes on without it", report)
                continue
            if stage == "trainer" and self.config.on_failure == "restart" and self.restarts < self.config.max_restarts:
                self.restarts += 1
                logger.error("%s\nrestarting the trainer from its newest checkpoint (%d/%d)", report, self.restarts,
                             self.config.max_restarts)
                del self.exit_codes[stage]
                self._start(stage, self.command("trainer") + ["--resume"])
            else:
                self.failure = report

    def run(self) -> int:
        """Start, supervise until every stage finished, a failure or a stop; returns the exit code."""
        for sub in ("logs", "status"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        for f in (self.work / "status").glob("*.json"):
            f.unlink()
        if self.config.curve:
            self.make_keys()
        try:
            for stage in self.stages():
                if self.failure or self.stop_event.is_set():
                    break
                self._start(stage, self.command(stage))
                self._await_endpoints(stage)
            if not self.failure and not self.stop_event.is_set():
                self._wait_ready()
            if "simulator" in self.procs and not self.failure and not self.stop_event.is_set():
                self._go()
            while not self.stop_event.is_set() and not self.failure:
                self._check()
                if self._progress:
                    self._progress(read_status(self.work / "status"))
                if all(stage in self.exit_codes for stage in self.procs if stage != "metrics"):  # runs until stopped
                    break
                self.stop_event.wait(0.5)
        finally:
            self.shutdown()
        if self.failure:
            logger.error("pipeline failed: %s", self.failure)
            return 1
        return 0 if not self.stop_event.is_set() else 130

    def shutdown(self) -> None:
        """SIGTERM every running stage's process group, SIGKILL after the grace period."""
        running = {s: p for s, p in self.procs.items() if p.poll() is None}
        for stage, proc in running.items():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.config.grace_s
        for stage, proc in running.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0f s: killing it", stage, self.config.grace_s)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        for stage, proc in self.procs.items():  # leftover children of a stage (e.g. spawned ranks)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for log in self._logs.values():
            log.close()


def default_demo_config(workdir: str, *, scans: int = 4, strategy: str = "er", seed: int = 0) -> PipelineConfig:
    """The embedded demo: 2-core CPU machine, no GPU, about 4 minutes.

    32×32 frames, 625 positions per scan at 20 frames/s: the two trainer ranks train continuously (the task's
    window fills the steps the stream cannot), 8 new + 8 replayed rows per rank and step, about 25 training rows
    per arriving frame (23-29 measured on a 2-core VM, 2026-12-03: new, window and replayed rows), the GPU regime
    (15-20 samples per frame of a 2 kHz detector) scaled to 2 CPU cores. Smaller batches, more steps: 8 + 8 took
    ~1.4× the steps of 16 + 16 in the same time and lowered the held-out error (docs/measurements.md).
    """
    from trainer.config import EvalConfig, ModelConfig
    from trainer.learner import LearnerConfig

    sim = SimulatorSection(scans=scans, frame_size=32, rate_hz=20.0, object_size_px=128, overlap=0.75, seed=seed,
                           follow_wait_s=5.0)
    trainer = TrainerConfig(
        backend="gloo", model=ModelConfig(nconv=8, depth=3, frame_size=32, decoder="shared"),
        learner=LearnerConfig(strategy=strategy, batch_size=8, replay=8, buffer_capacity=800, alpha=0.5, beta=1.0,
                              steps_per_exchange=4, lr=2e-3, task_weight="floor", ema=0.99, replay_boost=3,
                              replay_boost_steps=200),
        eval=EvalConfig(enabled=True, count=64, seed=seed, object_size_px=sim.object_size_px, overlap=sim.overlap,
                        families=sim.families),
        checkpoint_every_steps=200, idle_timeout_s=60.0)
    # a demo's workdir holds a demo: a second `make demo` replaces the first one's recording
    return PipelineConfig(workdir=workdir, simulator=sim, trainer=trainer, nproc=2, overwrite_recording=True)
