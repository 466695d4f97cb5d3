"""The ``ptychosteer`` command line: one click group, one subcommand per user task."""

from __future__ import annotations

import itertools
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from ptychosteer.console import Ticker, setup_logging
from streamer.netsec import check_bind
from streamer.physics import FAMILIES

logger = logging.getLogger(__name__)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """ptychosteer: real-time steering for ptychography (ingest, continual training, live steering)."""
    setup_logging(verbose)
    from streamer.lifeline import follow_supervisor

    follow_supervisor()  # a stage started by `launch` stops when the supervisor dies, even by SIGKILL


class CannotStart(click.ClickException):
    """A stage that cannot start (a taken port, an unreadable key file): one line, exit status 2, at once."""

    exit_code = 2


def _serve(stage: Any, banner: str) -> None:
    """Run a started long-running stage until it is done or stopped (SIGINT/SIGTERM), close it, print its
    summary as JSON on stdout."""
    _on_signals(stage.stop)
    click.echo(banner, err=True)
    try:
        summary = stage.run()
    finally:
        stage.close()
    click.echo(json.dumps(summary, default=str))


def _on_signals(stop: Any) -> None:
    """SIGINT/SIGTERM ask a long-running stage to stop cleanly (files closed intact)."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop())


@main.command()
@click.option("--endpoint", default="tcp://127.0.0.1:9999", help="Endpoint the detector binds (PUSH), like an EIGER.")
@click.option("--frame-size", default=64, help="Detector frame side [pixels] (64, 128, 256, ...).")
@click.option("--rate-hz", default=0.0, help="Frame rate [frames/s]; 0 sends as fast as the receiver takes them.")
@click.option("--scans", default=4, help="Number of scans; each scan is one SIMPLON series.")
@click.option("--families", default=",".join(FAMILIES), help="Object families per scan, cycled (comma-separated).")
@click.option("--encoding", default="bslz4", type=click.Choice(["raw", "lz4", "bslz4"]),
              help="Blob encoding: raw '<', 'lz4<' or bitshuffle+LZ4 'bs16-lz4<'/'bs32-lz4<'.")
@click.option("--protocol", default="v1", type=click.Choice(["v1", "v2"]),
              help="SIMPLON stream v1 (multipart JSON, as EIGER 1) or v2 (CBOR, EIGER2/PILATUS4 from SIMPLON 1.8).")
@click.option("--seed", default=0, help="Seed of objects, positions and photon noise.")
@click.option("--object-size", default=192, help="Side of each scan's object field [pixels].")
@click.option("--overlap", default=0.6, help="Linear probe overlap between neighbouring positions [0..1).")
@click.option("--scan-pattern", default="raster", type=click.Choice(["raster", "fermat"]), help="Scan trajectory.")
@click.option("--photons", default=1e6, help="Photons per frame for a fully transmitting object [counts].")
@click.option("--bit-depth", default="32", type=click.Choice(["16", "32"]),
              help="Detector pixel type [bits] (uint16 clips the central speckle at the default --photons).")
@click.option("--header-detail", default="basic", type=click.Choice(["none", "basic", "all"]),
              help="SIMPLON header detail.")
@click.option("--labels/--no-labels", default=True, help="Send the ground-truth patch (simulation-only extension).")
@click.option("--from-file", "from_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Replay a recorded HDF5 file (ptychosteer layout or EIGER master file) instead of simulating.")
@click.option("--follow", default=None, help="Steering feed endpoint to act on (stop, rescan, exposure): closed loop.")
@click.option("--follow-wait", "follow_wait_s", default=5.0,
              help="With --follow: at the end of a scan, wait this long for steering's decision [s].")
@click.option("--follow-server-key", default="", help="With --follow on a CURVE feed: the feed's public certificate.")
@click.option("--follow-client-cert", default="", help="With --follow on a CURVE feed: this client's secret certificate.")
@click.option("--wait-for-go", is_flag=True,
              help="After binding (the endpoint is in --status-file), wait for one line on standard input before "
                   "the first frame: 'go', or a JSON object {\"follow\": FEED} naming the feed to follow "
                   "(what launch sends once every stage is up).")
@click.option("--status-file", default=None,
              help="Write the bound endpoint, progress and steering actions as JSON here.")
@click.option("--insecure", is_flag=True, help="Allow binding a non-loopback ENDPOINT (no authentication on it).")
def simulate(endpoint: str, frame_size: int, rate_hz: float, scans: int, families: str, encoding: str,
             protocol: str, seed: int,
             object_size: int, overlap: float, scan_pattern: str, photons: float, bit_depth: str, header_detail: str,
             labels: bool, from_file: str | None, follow: str | None, follow_wait_s: float, follow_server_key: str,
             follow_client_cert: str, wait_for_go: bool, status_file: str | None, insecure: bool) -> None:
    """Attach the detector simulator: bind ENDPOINT and stream SIMPLON stream v1 (or v2) frames.

    ENDPOINT may name port 0 (tcp://127.0.0.1:0): the OS picks a free port, printed and written to --status-file.
    """
    from streamer.config import SimulatorConfig
    from streamer.replay import FileSource
    from streamer.simulator import Detector

    try:
        config = SimulatorConfig(endpoint=endpoint, frame_size=frame_size, rate_hz=rate_hz, scans=scans,
                                 families=tuple(f.strip() for f in families.split(",") if f.strip()),
                                 encoding=encoding, protocol=protocol, seed=seed, object_size_px=object_size,
                                 overlap=overlap,
                                 scan_pattern=scan_pattern, photons_per_frame=photons, bit_depth=int(bit_depth),
                                 header_detail=header_detail, send_labels=labels,
                                 follow_wait_s=follow_wait_s if follow or wait_for_go else 0.0)
        check_bind(endpoint, "the detector endpoint", insecure=insecure)
        if bool(follow_server_key) != bool(follow_client_cert):  # one alone would follow in plaintext, silently
            raise ValueError("CURVE needs both --follow-server-key and --follow-client-cert")
        source = FileSource(from_file) if from_file else None
    except (ValueError, OSError) as exc:
        raise click.BadParameter(str(exc)) from exc
    from ptychosteer.status import write_status
    from streamer.simulator import follow as follow_feed

    ticker = Ticker("simulate")
    detector = Detector(config, source)
    try:
        detector.start()
    except Exception as exc:  # zmq.ZMQError: the port is taken or the endpoint is invalid
        detector.close()
        raise CannotStart(f"cannot bind the detector endpoint {endpoint}: {exc}") from exc
    with detector:
        write_status(status_file, "simulator", {"endpoint": detector.endpoint, "frames_sent": 0, "actions": []})
        click.echo(f"detector simulator bound on {detector.endpoint}", err=True)
        if wait_for_go:
            follow = _wait_for_go(follow)
            if not follow:
                detector.control.follow_wait_s = 0.0
        click.echo(f"detector simulator streaming on {detector.endpoint}", err=True)
        _on_signals(detector.stop)  # SIGTERM/Ctrl-C: close the series, report what was sent, exit 0
        done = threading.Event()
        follower = None
        if follow:
            follower = threading.Thread(target=follow_feed, args=(detector, follow, done, None, follow_server_key,
                                                                   follow_client_cert), daemon=True)
            follower.start()
        def progress(p: Any) -> None:
            ticker.show(f"series {p.series}  frames {p.frames_sent}  {p.rate_hz:,.0f} frames/s")
            write_status(status_file, "simulator", {"endpoint": detector.endpoint, "series": p.series,
                                                    "frames_sent": p.frames_sent, "actions": detector.control.actions})

        try:
            sent = detector.run(progress)
        except KeyboardInterrupt:
            sent = detector.frames_sent
        done.set()
        write_status(status_file, "simulator", {"endpoint": detector.endpoint, "frames_sent": sent,
                                                "series_sent": detector.series_sent, "unsent": detector.unsent,
                                                "actions": detector.control.actions, "done": True})
        if follower:
            follower.join()
        ticker.done()
        click.echo(f"sent {sent} frames in {len(detector.series_sent)} series", err=True)
        for action in detector.control.actions:
            click.echo(f"steering action: {action}", err=True)


def _wait_for_go(follow: str | None) -> str | None:
    """Block until a go line arrives on standard input; returns the feed to follow (the line's, else ``follow``)."""
    line = sys.stdin.readline()
    if not line:
        raise click.ClickException("standard input closed before the go line (--wait-for-go): nothing sent")
    line = line.strip()
    if line in ("", "go"):
        return follow
    try:
        body = json.loads(line)
        if not isinstance(body, dict) or not isinstance(body.get("follow", ""), str):
            raise ValueError("expected a JSON object with an optional string 'follow'")
    except ValueError as exc:
        raise click.ClickException(f"bad go line {line[:80]!r}: {exc}") from exc
    return body.get("follow") or follow


@main.command()
@click.option("--detector", "detector_endpoint", default="tcp://127.0.0.1:9999",
              help="Detector endpoint to connect to (its PUSH socket).")
@click.option("--output", default="runs/recording.h5",
              help="HDF5 recording path; '' disables persistence. An existing file is kept: the ingest refuses to "
                   "start (see --overwrite).")
@click.option("--overwrite", is_flag=True, help="Replace a file already at --output (its frames are lost).")
@click.option("--train-endpoint", default="tcp://127.0.0.1:5560", help="Bind PUSH for trainer ranks; '' disables.")
@click.option("--live-endpoint", default="tcp://127.0.0.1:5561", help="Bind PUB for live consumers; '' disables.")
@click.option("--notice-endpoint", default="tcp://127.0.0.1:5562",
              help="Bind XPUB of series notices (headers with mask and flatfield, ends) for every trainer rank "
                   "(train --notices); '' disables: headers then reach trainers only round-robin with the frames.")
@click.option("--protocol", default="v1", type=click.Choice(["v1", "v2"]),
              help="What the detector speaks: SIMPLON stream v1 (multipart JSON) or v2 (CBOR). Messages of the other "
                   "protocol are counted as 'wrong_protocol' and quarantined, with a hint in the log.")
@click.option("--compression", default="bslz4", type=click.Choice(["none", "bslz4"]),
              help="HDF5 compression of frames (bitshuffle+LZ4 via hdf5plugin); a detector's bitshuffle-LZ4 frames "
                   "are then written as sent (direct chunk write), not decoded and compressed again.")
@click.option("--max-series", default=0, help="Stop after this many completed series (0: run until stopped).")
@click.option("--max-frames", default=0, help="Stop after this many frames (0: unlimited).")
@click.option("--idle-timeout", "idle_timeout_s", default=0.0, help="Stop after this long without data [s] (0: never).")
@click.option("--stats-interval", "stats_interval_s", default=2.0, help="Counter log/progress interval [s].")
@click.option("--status-file", default=None, help="Write the counters as JSON here at every stats interval.")
@click.option("--verify-hash/--no-verify-hash", default=False,
              help="Check each image's MD5 (dimage-1.0 'hash') against its blob; mismatches are quarantined "
                   "(about 50 us of CPU per 32 KiB frame).")
@click.option("--first-series", default=0, type=click.IntRange(min=0),
              help="Record series ids >= this: a detector's lower id is given the next id from here, its own id kept "
                   "as detector_series (0: the detector's ids as they come).")
@click.option("--after", "after", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="An earlier recording of this run (repeatable): series are numbered above its highest id, so "
                   "trainers and steering that outlive an ingest and detector restart never see one id for two "
                   "armings.")
@click.option("--insecure", is_flag=True,
              help="Allow binding non-loopback trainer/live endpoints (frames readable by anyone who connects).")
def ingest(detector_endpoint: str, output: str, overwrite: bool, train_endpoint: str, live_endpoint: str,
           notice_endpoint: str, protocol: str, compression: str,
           max_series: int, max_frames: int, idle_timeout_s: float, stats_interval_s: float,
           status_file: str | None, verify_hash: bool, first_series: int, after: tuple[str, ...],
           insecure: bool) -> None:
    """Receive from a detector, validate, record to HDF5 and fan out to trainers and live consumers."""
    from streamer.config import IngestConfig
    from streamer.ingest import Ingest

    try:
        first_series = max(first_series, _series_after(after, output))
        config = IngestConfig(detector_endpoint=detector_endpoint, output_path=output, overwrite=overwrite,
                              train_endpoint=train_endpoint,
                              live_endpoint=live_endpoint, notice_endpoint=notice_endpoint, protocol=protocol,
                              compression=compression, max_series=max_series,
                              max_frames=max_frames, idle_timeout_s=idle_timeout_s, stats_interval_s=stats_interval_s,
                              verify_hash=verify_hash, first_series=first_series)
        check_bind(train_endpoint, "the trainer endpoint", insecure=insecure)
        check_bind(live_endpoint, "the live endpoint", insecure=insecure)
        check_bind(notice_endpoint, "the notice endpoint", insecure=insecure)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    ticker = Ticker("ingest")
    stage = Ingest(config)
    try:
        stage.start()
    except Exception as exc:  # zmq.ZMQError (port in use), OSError (unwritable path)
        stage.close()
        raise CannotStart(f"cannot start the ingest: {exc}") from exc
    _on_signals(stage.stop)
    from ptychosteer.status import write_status

    def progress(snap: dict[str, Any]) -> None:
        ticker.show(_ingest_line(snap))
        write_status(status_file, "ingest", {**snap, "train_endpoint": stage.train_endpoint,
                                             "live_endpoint": stage.live_endpoint,
                                             "notice_endpoint": stage.notice_endpoint})

    progress(stage.snapshot())  # at once: the endpoints it bound (launch waits for them)

    try:
        stage.run(progress)
    finally:
        stage.close()
    ticker.done()
    write_status(status_file, "ingest", {**stage.snapshot(), "train_endpoint": stage.train_endpoint,
                                         "live_endpoint": stage.live_endpoint,
                                         "notice_endpoint": stage.notice_endpoint, "done": True})
    click.echo(json.dumps(stage.snapshot()), err=False)


def _series_after(recordings: tuple[str, ...], output: str) -> int:
    """The first series id above every series of the earlier ``recordings`` (0 for none)."""
    from streamer.hdf5 import highest_series

    highest = 0
    for path in recordings:
        if output and Path(path).resolve() == Path(output).resolve():
            raise ValueError(f"--after {path} is the --output file itself: name the earlier run's recording, and "
                             f"record this run to a new file")
        try:
            highest = max(highest, highest_series(path))
        except (OSError, ValueError) as exc:
            raise ValueError(f"--after {path}: cannot read its series ({exc}); give the first id to record "
                             f"with --first-series instead") from exc
    return highest + 1 if recordings else 0


def _ingest_line(s: dict[str, Any]) -> str:
    return (f"received {s['received']}  persisted {s['persisted']}  forwarded {s['forwarded']}  "
            f"dropped {s['dropped']}  malformed {s['malformed']}")


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect(path: str, as_json: bool) -> None:
    """Summarise a recording (ptychosteer layout or EIGER master file)."""
    from ptychosteer.summary import summarise

    try:
        summary = summarise(Path(path))
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"{path}: {exc}") from exc
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        click.echo(f"{key:>18}: {value}")


@main.command()
@click.argument("recording", type=click.Path(exists=True, dir_okay=False))
@click.option("--series", type=int, default=None, help="The series to reconstruct (default: the first recorded).")
@click.option("--algorithm", default="rpie", show_default=True, type=click.Choice(["epie", "rpie", "lsqml"]),
              help="ePIE, rPIE (regularised PIE) or LSQML-style batched least-squares steps (the GPU path).")
@click.option("--iterations", default=50, show_default=True, help="Sweeps over all positions.")
@click.option("--alpha", default=0.0, help="Step/regularisation (0: the algorithm's default: ePIE 1, rPIE 0.1).")
@click.option("--batch", default=64, show_default=True, help="LSQML: positions per batch.")
@click.option("--probe", "probe_file", default="", help="The probe as a .npy complex array (default: the one the "
                                                         "series header describes).")
@click.option("--refine-probe", is_flag=True, help="Refine the probe too (after the first iterations).")
@click.option("--photons", default=0.0, help="Incident photons per frame (default: the header's, else the "
                                             "largest frame total).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--out", "out_path", default="", help="Output HDF5 (default: RECORDING's folder/"
                                                    "reconstruction_series<N>.h5); a PNG is written beside it.")
def reconstruct(recording: str, series: int | None, algorithm: str, iterations: int, alpha: float, batch: int,
                probe_file: str, refine_probe: bool, photons: float, device: str, out_path: str) -> None:
    """Iterative ptychographic reconstruction of one recorded series: the reference for the learned model.

    Writes the object, the probe, the data error per iteration and, in simulation (frames with labels), the error
    against the truth over the illuminated part of each frame's patch, after removing one global phase — the
    metric the learned model is reported in."""
    import numpy as np

    from streamer.physics import illuminated
    from trainer.iterative import EngineConfig, load_scan, patch_error, reconstruct as run, save

    try:
        config = EngineConfig(algorithm=algorithm, iterations=iterations, alpha=alpha, batch=batch,
                              refine_probe=refine_probe, device=device)
        scan = load_scan(recording, series, probe_file, photons)
    except (ValueError, OSError) as exc:
        raise click.BadParameter(str(exc)) from exc
    region = illuminated(scan.probe)
    truth = (lambda obj: patch_error(obj, scan, region)) if scan.amplitude is not None else None
    click.echo(f"series {scan.series}: {len(scan.frames)} frames {scan.frames.shape[1]}x{scan.frames.shape[2]}, "
               f"object {scan.object_shape}, flux {scan.photons:.3g} photons/frame ({scan.photons_source}), "
               f"{int((~scan.valid).sum())} pixels not trusted (masked or saturated)", err=True)

    def progress(it: int, err: float) -> None:
        if it % 10 == 9 or it == iterations - 1:
            click.echo(f"  iteration {it + 1}/{iterations}: data error {err:.3g}", err=True)

    try:
        result = run(scan.frames, scan.positions, scan.probe, scan.object_shape, photons=scan.photons,
                     valid=scan.valid, config=config, truth=truth, progress=progress)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    out = out_path or str(Path(recording).with_name(f"reconstruction_series{scan.series}.h5"))
    h5, png = save(result, scan, config, out)
    summary = {"series": scan.series, "algorithm": algorithm, "frames": len(scan.frames),
               "seconds": round(result.seconds, 2), "data_error": float(np.float64(result.data_error[-1])),
               "output": h5, "figure": png}
    if result.truth_error:
        summary["error_illuminated"] = round(result.truth_error[-1], 5)
    click.echo(json.dumps(summary))


@main.command()
@click.option("--recording", required=True, help="The ingest's recording (HDF5) to watch.")
@click.option("--endpoint", default="tcp://127.0.0.1:5565", show_default=True,
              help="Bind the labelled frames here (PUSH); trainers connect with train --stream.")
@click.option("--notice-endpoint", default="tcp://127.0.0.1:5566", show_default=True,
              help="Bind the series notices for every trainer rank here (XPUB; train --notices); '' disables.")
@click.option("--algorithm", default="lsqml", show_default=True, type=click.Choice(["epie", "rpie", "lsqml"]))
@click.option("--iterations", default=50, show_default=True, help="Iterations per series.")
@click.option("--device", default="cpu", show_default=True, help="Where the reconstructions run (cpu, cuda).")
@click.option("--max-series", default=0, help="Stop after labelling this many series (0: until stopped).")
@click.option("--idle-timeout", "idle_timeout_s", default=0.0, help="Stop when no series ended for this long [s].")
@click.option("--poll", "poll_s", default=1.0, show_default=True, help="How often the recording is looked at [s].")
@click.option("--status-file", default="", help="Write progress as JSON here.")
@click.option("--threads", default=0, show_default=True,
              help="Intra-op threads of CPU reconstructions (0: one per core; 1 beside trainer ranks on the same "
                   "cores).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback bind (labelled frames unauthenticated).")
def label(recording: str, endpoint: str, notice_endpoint: str, algorithm: str, iterations: int, device: str, max_series: int,
          idle_timeout_s: float, poll_s: float, status_file: str, threads: int, insecure: bool) -> None:
    """Label frames from iterative reconstructions of the recording, for trainers without ground truth.

    Each series whose end is recorded is reconstructed (the probe and flux from its header) and its frames are
    sent with patches of the reconstruction as labels, then its series end; trainers connect here instead of to
    the ingest (train --stream ENDPOINT). Nothing reads simulated ground truth."""
    from trainer.iterative import EngineConfig
    from trainer.labeler import Labeler, LabelerConfig, use_threads

    try:
        config = LabelerConfig(recording=recording, endpoint=endpoint, notice_endpoint=notice_endpoint,
                               max_series=max_series, threads=threads,
                               idle_timeout_s=idle_timeout_s, poll_s=poll_s, status_path=status_file,
                               engine=EngineConfig(algorithm=algorithm, iterations=iterations, device=device))
        check_bind(endpoint, "the labelled frames", insecure=insecure)
        check_bind(notice_endpoint, "the labeler's notice endpoint", insecure=insecure)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    use_threads(config)
    try:
        stage = Labeler(config)
    except Exception as exc:  # zmq.ZMQError: the endpoint is taken or invalid
        raise CannotStart(f"cannot start the labeler: cannot bind {endpoint}: {exc}") from exc
    _serve(stage, f"labelled frames on {stage.endpoint}")


@main.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TOML file: trainer keys at top level or under [trainer], with [model], [learner], [eval] tables.")
@click.option("--stream", default=None, help="The ingest's trainer endpoint to connect to (PULL).")
@click.option("--notices", default=None,
              help="The ingest's (or labeler's) series-notice endpoint to subscribe to (ingest --notice-endpoint): "
                   "every rank then gets every header (mask, flatfield, beam centre) even when the frames' socket "
                   "skipped it (config: notice_endpoint; default none).")
@click.option("--announce", default=None, help="Endpoint rank 0 binds (PUB) to announce model versions; '' disables.")
@click.option("--out-dir", default=None, help="Checkpoints, metrics.json and figures go here.")
@click.option("--strategy", default=None, type=click.Choice(["naive", "er", "der", "derpp", "scratch"]),
              help="Continual-learning strategy.")
@click.option("--backend", default=None, type=click.Choice(["auto", "gloo", "nccl"]), help="torch.distributed backend.")
@click.option("--buffer-comm", default=None, type=click.Choice(["torch", "cupy"]),
              help="Rehearsal-buffer communicator: torch (own torch.distributed group) or cupy (own CuPy NCCL "
                   "communicator and CUDA stream; GPU ranks, needs the gpu extra).")
@click.option("--max-tasks", type=int, default=None, help="Stop after this many tasks (scans); 0 = until idle.")
@click.option("--idle-timeout", "idle_timeout_s", type=float, default=None,
              help="Stop when the stream has been idle this long [s].")
@click.option("--nproc", type=int, default=1, help="Spawn this many local ranks (not needed under torchrun).")
@click.option("--resume", is_flag=True,
              help="Continue from the newest usable checkpoint in OUT_DIR/checkpoints. Series ids trained before "
                   "are not trained again, unless their headers are of another arming (a new run).")
@click.option("--catch-up", "catch_up", default=None, metavar="RECORDING",
              help="The ingest's recording: first train on the series in it this trainer has not trained (those "
                   "it missed while down), read from disk, then take the live stream.")
@click.option("--eval/--no-eval", "evaluate", default=None,
              help="Evaluate on simulated held-out sets after each task (simulation only).")
@click.option("--status-file", default=None, help="Rank 0 writes its counters as JSON here.")
@click.option("--insecure", is_flag=True, default=None,
              help="Allow a non-loopback announce endpoint (model announcements unauthenticated; config: insecure).")
@click.option("--announce-curve-secret", default=None,
              help="Server secret certificate: announce models over CURVE (with --announce-authorized-keys).")
@click.option("--announce-authorized-keys", default=None,
              help="Folder of the client public keys (steering's) allowed to hear the announcements.")
@click.option("--binning", type=int, default=None,
              help="Frames cut to the model: sum BINNING x BINNING detector pixels (the region of interest around "
                   "the beam is frame_size x BINNING pixels; config: [trainer.prepare] binning).")
@click.option("--beam-center", default=None, metavar="Y,X",
              help="Centre of the region of interest [detector pixels] (default: the series header's "
                   "beam_center_y/x, else the frame's centre).")
@click.option("--count-time", "count_time_s", type=float, default=None,
              help="Scale counts to this count time [s] with the header's count_time (default: no scaling).")
@click.option("--loss", type=click.Choice(["l1mse", "l1", "mse", "physics"]), default=None,
              help="Task loss: l1mse (L1 + MSE, the default), l1 or mse against labels, or physics: no labels, the "
                   "predicted patch times the probe propagated to the detector against the measured frame (per "
                   "photon on the amplitude scale; learner.physics_noise = \"poisson\": the Poisson divergence).")
@click.option("--probe", "probe_file", default=None,
              help="With --loss physics: the probe (.npy complex, or the HDF5 of `ptychosteer reconstruct`) at the "
                   "model's input sampling (default: the one each series header describes).")
def train(config_path: str | None, stream: str | None, notices: str | None, announce: str | None, out_dir: str | None,
          strategy: str | None, backend: str | None, buffer_comm: str | None, max_tasks: int | None,
          idle_timeout_s: float | None, nproc: int, resume: bool, catch_up: str | None, evaluate: bool | None,
          status_file: str | None, insecure: bool | None, announce_curve_secret: str | None,
          announce_authorized_keys: str | None, binning: int | None, beam_center: str | None,
          count_time_s: float | None, loss: str | None, probe_file: str | None) -> None:
    """Continual, data-parallel training of PtychoNN on the live stream (run under torchrun, or use --nproc).

    Frames of any detector size are cut to the model's input (region of interest around the beam, binning, the
    header's pixel mask and pixels at the type's maximum zeroed, flatfield), as recorded in every checkpoint."""
    from ptychosteer.config import ConfigError, from_dict, load_toml, with_overrides
    from trainer.config import TrainerConfig
    from trainer.distributed import spawn_local

    try:
        data = load_toml(config_path) if config_path else {}
        config = from_dict(TrainerConfig, data.get("trainer", data), "trainer")
        config = with_overrides(config, stream_endpoint=stream, notice_endpoint=notices,
                                announce_endpoint=announce, out_dir=out_dir,
                                backend=backend, buffer_comm=buffer_comm, max_tasks=max_tasks,
                                idle_timeout_s=idle_timeout_s, resume=resume or None, catch_up=catch_up,
                                status_path=status_file,
                                insecure=insecure or None, announce_curve_secret=announce_curve_secret,
                                announce_authorized_keys=announce_authorized_keys)
        if strategy or loss:
            # --loss physics: no labels, so no label-spread weights either (a config's task_weight is for labels)
            config = with_overrides(config, learner=with_overrides(
                config.learner, strategy=strategy, loss=loss, task_weight="none" if loss == "physics" else None))
        if probe_file:
            config = with_overrides(config, probe_file=probe_file)
        if config.probe_file:  # a missing or mis-sized probe: one clear line here, not a traceback in every rank
            from trainer.physics import load_probe

            load_probe(config.probe_file, config.model.frame_size)
        prepare = dict(config.prepare)
        if binning is not None:
            prepare["binning"] = binning
        if count_time_s is not None:
            prepare["count_time_s"] = count_time_s
        if beam_center:
            try:
                prepare["center"] = [float(v) for v in beam_center.split(",")]
            except ValueError as exc:
                raise ValueError(f"--beam-center must be Y,X in pixels, got {beam_center!r}") from exc
        config = with_overrides(config, prepare=prepare)
        if evaluate is not None:
            config = with_overrides(config, eval=with_overrides(config.eval, enabled=evaluate))
        check_bind(config.announce_endpoint, "the announce endpoint", authenticated=bool(config.announce_curve_secret),
                   insecure=config.insecure)
    except (ConfigError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from exc
    if nproc < 1:
        raise click.BadParameter("--nproc must be >= 1")
    _check_announce(config)
    if config.buffer_comm == "cupy":  # fail here, not in every rank after the process group is up
        import importlib.util

        import torch

        if not torch.cuda.is_available():
            raise click.BadParameter("buffer_comm cupy needs CUDA ranks, and this machine has no CUDA device")
        if importlib.util.find_spec("cupy") is None:
            raise click.BadParameter("buffer_comm cupy needs CuPy: pip install -e '.[gpu]' (cupy-cuda12x or 13x)")
    verbosity = 2 if logging.getLogger().getEffectiveLevel() <= logging.DEBUG else 1  # rank 0 shows progress
    if nproc > 1:
        spawn_local(_train_rank, nproc, config, verbosity)
    else:
        _train_rank(config, verbosity)


def _check_announce(config: Any) -> None:
    """Where rank 0 will bind its announcements: bind once here, with its keys, so that a taken port or an
    unreadable key file is one clear line and exit status 2 before any rank starts (not a traceback from inside
    rank 0). A context of its own, terminated, so the port is free again when rank 0 binds it."""
    import os

    import zmq

    from trainer.checkpoint import Announcer

    if not config.announce_endpoint or os.environ.get("RANK", "0") != "0":
        return
    ctx = zmq.Context()
    try:
        Announcer(config.announce_endpoint, context=ctx, curve_secret=config.announce_curve_secret,
                  authorized_keys=config.announce_authorized_keys).close()
    except (zmq.ZMQError, ValueError, OSError) as exc:
        raise CannotStart(f"cannot start the trainer: the announce endpoint {config.announce_endpoint}: {exc}") \
            from exc
    finally:
        ctx.term()


def _train_rank(config: Any, verbosity: int) -> None:
    """One rank: rank 0 shows progress (info logs) and prints the summary as JSON."""
    import os

    from trainer.loop import run

    rank = int(os.environ.get("RANK", "0"))
    setup_logging(verbosity if rank == 0 else 0)
    summary = run(config)
    if rank == 0:
        click.echo(json.dumps(summary, default=float))


@main.command()
@click.option("--live", "live_endpoint", default="tcp://127.0.0.1:5561", help="The ingest's live PUB to subscribe to.")
@click.option("--models", "models_endpoint", default="tcp://127.0.0.1:5570",
              help="The trainer's model announcements (PUB); '' disables.")
@click.option("--feed", "feed_endpoint", default="tcp://127.0.0.1:5580",
              help="Bind the decision feed here (loopback by default).")
@click.option("--model", "model_path", default="", help="A checkpoint's model.pt to start with.")
@click.option("--models-dir", default="runs/train/checkpoints",
              help="The trainer's checkpoint folder (its --out-dir/checkpoints): announced models are loaded only "
                   "from inside it (symlinks resolved).")
@click.option("--out-dir", default="runs/steering", help="Mosaic pictures (PNG) and arrays (.npz) go here.")
@click.option("--max-scans", default=0, help="Stop after this many scans ended (0: until stopped).")
@click.option("--idle-timeout", "idle_timeout_s", default=0.0, help="Stop after this long without frames [s].")
@click.option("--model-wait", "model_wait_s", default=60.0, show_default=True,
              help="Done (--max-scans, --idle-timeout) while frames still wait for a first model: wait this long "
                   "for one to be announced, then stop, counting them as skipped_no_model [s].")
@click.option("--picture-interval", "picture_interval_s", default=5.0, help="Mosaic PNG refresh interval [s].")
@click.option("--max-lag-ms", default=100.0, show_default=True,
              help="Latency budget, a frame's receipt at the ingest → the decision: a frame that cannot be "
                   "reconstructed within it is skipped (counted; still on disk), and under overload an evenly "
                   "spread fraction is reconstructed.")
@click.option("--batch-max", default=64, show_default=True,
              help="Frames per inference batch at most (also capped to a quarter of the budget's worth).")
@click.option("--backfill-mb", default=256.0, show_default=True,
              help="Memory for frames skipped under load, reconstructed when steering is idle (0: none).")
@click.option("--keep-ended-scans", default=8, show_default=True,
              help="Ended scans kept in memory (mosaic, picture, state); an older one is retired after its last "
                   "picture.")
@click.option("--recording", default="",
              help="The ingest's recording (HDF5): frames the live queues dropped before they reached steering are "
                   "read from it when idle and reconstructed too (default: none; they stay skipped). A file whose "
                   "header of a live scan differs from the live one, or whose frame differs from the live frame "
                   "that started a scan from it, is another run's and is not read (foreign_recording).")
@click.option("--curve-secret", default="", help="Server secret certificate: require CURVE on the feed.")
@click.option("--authorized-keys", default="", help="Folder of the client public keys allowed on the feed.")
@click.option("--models-server-key", default="",
              help="The trainer's announce public certificate: hear model announcements over CURVE (required "
                   "when the feed uses CURVE).")
@click.option("--models-client-cert", default="", help="This steering's secret certificate for the announcements.")
@click.option("--status-file", default="", help="Write the counters as JSON here every second.")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback feed without CURVE (anyone may subscribe).")
def steer(live_endpoint: str, models_endpoint: str, feed_endpoint: str, model_path: str, models_dir: str,
          out_dir: str, max_scans: int, idle_timeout_s: float, model_wait_s: float, picture_interval_s: float,
          max_lag_ms: float, batch_max: int, backfill_mb: float, keep_ended_scans: int, recording: str,
          curve_secret: str, authorized_keys: str, models_server_key: str, models_client_cert: str,
          status_file: str, insecure: bool) -> None:
    """Reconstruct live with the newest model and publish steering decisions."""
    from steering.service import Steering, SteeringConfig, use_threads

    try:
        config = SteeringConfig(live_endpoint=live_endpoint, models_endpoint=models_endpoint,
                                feed_endpoint=feed_endpoint, model_path=model_path, models_dir=models_dir,
                                out_dir=out_dir,
                                max_scans=max_scans, idle_timeout_s=idle_timeout_s, model_wait_s=model_wait_s,
                                picture_interval_s=picture_interval_s, max_lag_ms=max_lag_ms,
                                batch_max=batch_max, backfill_mb=backfill_mb, keep_ended_scans=keep_ended_scans,
                                recording=recording, curve_secret=curve_secret,
                                authorized_keys=authorized_keys, models_server_key=models_server_key,
                                models_client_cert=models_client_cert, status_path=status_file)
        check_bind(feed_endpoint, "the decision feed", authenticated=bool(curve_secret), insecure=insecure)
        stage = Steering(config)
    except ValueError as exc:  # a bad option value, as for every other stage: a usage error (exit 2)
        raise click.BadParameter(str(exc)) from exc
    except OSError as exc:
        raise CannotStart(f"cannot start steering: {exc}") from exc
    try:
        stage.start()
    except Exception as exc:  # zmq.ZMQError: endpoint in use or invalid; OSError: unreadable key files
        stage.close()
        raise CannotStart(f"cannot start steering: {exc}") from exc
    use_threads(config)
    _serve(stage, f"steering feed on {stage.feed.endpoint}")


@main.command()
@click.argument("endpoint")
@click.option("--format", "fmt", default="table", type=click.Choice(["table", "json"]), help="Output format.")
@click.option("--count", default=0, help="Exit after this many decisions (0: until Ctrl-C).")
@click.option("--timeout", "timeout_s", default=0.0, help="Exit after this long without a decision [s] (0: never).")
@click.option("--server-key", default=None, help="The feed's public certificate (CURVE).")
@click.option("--client-cert", default=None, help="This client's secret certificate (CURVE).")
def subscribe(endpoint: str, fmt: str, count: int, timeout_s: float, server_key: str | None,
              client_cert: str | None) -> None:
    """Print the steering feed at ENDPOINT as JSON lines or a readable table."""
    from dataclasses import asdict

    import zmq

    from steering.feed import subscribe as feed

    if bool(server_key) != bool(client_cert):  # one without the other would silently connect in plaintext
        raise click.BadParameter("CURVE needs both --server-key and --client-cert")

    seen, last = 0, time.monotonic()
    decisions = feed(endpoint, curve_server_key=Path(server_key) if server_key else None,
                     curve_client=Path(client_cert) if client_cert else None)
    try:
        first = next(decisions)  # the socket is set up here: a bad endpoint or certificate fails now, clearly
    except (zmq.ZMQError, OSError, ValueError) as exc:
        raise click.ClickException(f"cannot subscribe to {endpoint}: {exc}") from exc
    for decision in itertools.chain([first], decisions):
        now = time.monotonic()
        if decision is None:
            if timeout_s and now - last >= timeout_s:
                break
            continue
        last = now
        if fmt == "json":
            click.echo(json.dumps(asdict(decision), default=float))
        else:
            extra = (f"{len(decision.positions_px)} positions" if decision.positions_px else
                     f"exposure x{decision.exposure_factor:g}" if decision.exposure_factor else "")
            click.echo(f"#{decision.seq:<5} scan {decision.scan:<3} {decision.kind:<16} model v{decision.model_version:<3} "
                       f"{decision.reason} {extra}")
        seen += 1
        if count and seen >= count:
            break


@main.command()
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False), default="runs/steering")
def view(out_dir: str) -> None:
    """Render the latest mosaic arrays in OUT_DIR to PNG now and print the paths."""
    from steering.pictures import render

    files = sorted(Path(out_dir).glob("mosaic_scan*.npz"))
    if not files:
        raise click.ClickException(f"no mosaic_scan*.npz in {out_dir}: is steering writing there?")
    for npz in files:
        click.echo(str(render(npz)))


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--name", default="client", help="Certificate name (server, or one per client).")
def keys(directory: str, name: str) -> None:
    """Generate a CURVE key pair for the steering feed (NAME.key public, NAME.key_secret secret)."""
    import zmq.auth

    Path(directory).mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(directory, name)
    click.echo(f"public: {public}\nsecret: {secret}")


def _pipeline_line(status: dict[str, Any]) -> str:
    i, t, s, m = (status.get(k, {}) for k in ("ingest", "trainer", "steering", "simulator"))
    decisions = sum(v for k, v in s.items() if k.startswith("decisions_") and k != "decisions_continue")
    loss = t.get("loss")
    return (f"frames in {i.get('received', 0)} persisted {i.get('persisted', 0)} | train step {t.get('steps', 0)} "
            f"tasks {len(t.get('tasks', []))} loss {loss if loss is None else round(loss, 4)} model v{t.get('version', 0)} "
            f"| steering v{s.get('model_version', 0)} recon {s.get('reconstructed', 0)} decisions {decisions} "
            f"| simulator actions {len(m.get('actions', []))}")


def _run_pipeline(config: Any) -> int:
    from ptychosteer.pipeline import Pipeline

    ticker = Ticker("pipeline", interval_s=2.0)
    try:
        pipeline = Pipeline(config, lambda st: ticker.show(_pipeline_line(st)))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    _on_signals(pipeline.stop_event.set)
    click.echo(f"pipeline in {pipeline.work}: logs/, status/, recording.h5, train/, steering/", err=True)
    t0 = time.monotonic()
    code = pipeline.run()
    ticker.done()
    from ptychosteer.summary import pipeline_summary

    click.echo(f"{'elapsed':>22}: {time.monotonic() - t0:.0f} s (start to the last stage's exit)")
    for key, value in pipeline_summary(pipeline.work).items():
        click.echo(f"{key:>22}: {value}")
    if pipeline.failure:
        click.echo(f"FAILED: {pipeline.failure}", err=True)
    return code


@main.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="Pipeline TOML (see configs/): [simulator], [ports], [trainer] with its tables, supervision keys.")
@click.option("--workdir", default=None, help="Override the config's workdir (logs, status, recording, figures).")
def launch(config_path: str, workdir: str | None) -> None:
    """Start ingest, trainer ranks, steering and (optionally) the simulator from one config, and supervise them."""
    from ptychosteer.config import ConfigError, from_dict, load_toml, with_overrides
    from ptychosteer.pipeline import PipelineConfig

    try:
        config = with_overrides(from_dict(PipelineConfig, load_toml(config_path), "pipeline"), workdir=workdir)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from exc
    sys.exit(_run_pipeline(config))


@main.command()
@click.option("--workdir", default="runs/demo",
              help="Where logs, status, the recording and the figures go (an earlier demo's there are replaced).")
@click.option("--scans", default=4, help="Scans to simulate (one object family each).")
@click.option("--strategy", default="er", type=click.Choice(["naive", "er", "der", "derpp", "scratch"]),
              help="Continual-learning strategy of the trainers.")
@click.option("--seed", default=0, help="Simulation seed.")
@click.option("--compare-naive", is_flag=True,
              help="Afterwards, train naive fine-tuning on the recorded frames and compare errors and forgetting.")
@click.option("--no-labels", is_flag=True,
              help="No ground truth: the simulator sends none and the trainers learn from the labeler's iterative "
                   "reconstructions of each scan (the truth is used only to evaluate).")
@click.option("--physics", is_flag=True,
              help="No ground truth either, and no labeler: the trainers learn from the measured frames with the "
                   "physics-informed loss (the predicted patch times the header's probe, propagated to the "
                   "detector, against the frame).")
def demo(workdir: str, scans: int, strategy: str, seed: int, compare_naive: bool, no_labels: bool,
         physics: bool) -> None:
    """The main job on an embedded default: simulator, ingest, 2 CPU trainer ranks, steering, closed loop."""
    import dataclasses

    from ptychosteer.pipeline import LabelerSection, default_demo_config

    if (no_labels or physics) and compare_naive:
        raise click.BadParameter("--compare-naive trains on the recording's labels, which --no-labels and "
                                 "--physics leave out")
    if no_labels and physics:
        raise click.BadParameter("choose one: --no-labels (labels from the labeler) or --physics (no labels)")
    config = default_demo_config(workdir, scans=scans, strategy=strategy, seed=seed)
    if no_labels or physics:  # 16 + 16 rows per rank, not the labelled demo's 8 + 8: the labeler's scans got 300
        # steps each (before the trainers held them), and the physics loss pairs overlapping frames within a batch
        # (2026-12-03, 8 + 8: phase-free whole-patch mean 0.78 against 0.72 with the labeler, 1.23 against 1.19
        # with the physics loss)
        learner = dataclasses.replace(config.trainer.learner, batch_size=16, replay=16)
        config = dataclasses.replace(config, trainer=dataclasses.replace(config.trainer, learner=learner))
    if no_labels:
        config = dataclasses.replace(config, labeler=LabelerSection(enabled=True))
    if physics:
        learner = dataclasses.replace(config.trainer.learner, loss="physics", task_weight="none")  # no labels
        config = dataclasses.replace(config, trainer=dataclasses.replace(config.trainer, learner=learner))
    code = _run_pipeline(config)
    if code == 0 and compare_naive and strategy != "naive":
        from ptychosteer.demo import compare_with_naive

        click.echo("comparing with naive fine-tuning on the recorded frames ...", err=True)
        for key, value in compare_with_naive(config).items():
            click.echo(f"{key:>22}: {value}")
    sys.exit(code)


@main.command()
@click.argument("workdir", type=click.Path(exists=True, file_okay=False), default="runs/pipeline")
@click.option("--json", "as_json", is_flag=True, help="Print the raw status files as JSON.")
def status(workdir: str, as_json: bool) -> None:
    """Show the counters of every stage of a pipeline run in WORKDIR (from its status/ files)."""

    from ptychosteer.status import read_status

    st = read_status(Path(workdir) / "status")
    if not st:
        raise click.ClickException(f"no status files in {workdir}/status: is a pipeline running there?")
    if as_json:
        click.echo(json.dumps(st, indent=2, default=str))
        return
    for stage, body in st.items():
        age = time.time() - body.get("time", 0)
        fields = ", ".join(f"{k}={v}" for k, v in body.items()
                           if k not in ("stage", "time", "pid") and not isinstance(v, (dict, list)))
        click.echo(f"{stage:<10} (pid {body.get('pid')}, {age:4.1f} s ago) {fields}")


@main.command()
@click.argument("workdir", type=click.Path(file_okay=False), default="runs/pipeline")
@click.option("--status-dir", default=None, type=click.Path(file_okay=False),
              help="Read the status files here instead of WORKDIR/status (stages started by hand with "
                   "--status-file).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Serve http://HOST:PORT/metrics for Prometheus to scrape (0: a free port, printed).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on. Another than loopback needs --tls-cert, --tls-key and --client-ca "
                   "(scrapers must present a certificate that CA signed), or --insecure.")
@click.option("--textfile", default=None, type=click.Path(dir_okay=False),
              help="Also (or instead) write the metrics to this file every --interval seconds, atomically, for "
                   "node_exporter's textfile collector (name it *.prom in its directory).")
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds between --textfile writes.")
@click.option("--tls-cert", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Serve HTTPS with this certificate (PEM).")
@click.option("--tls-key", default=None, type=click.Path(exists=True, dir_okay=False),
              help="The certificate's private key (PEM).")
@click.option("--client-ca", default=None, type=click.Path(exists=True, dir_okay=False),
              help="With --tls-cert: only scrapers with a client certificate signed by this CA are answered.")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without TLS client authentication.")
@click.option("--status-file", default=None, help="Write the URL served (endpoint) here, as the stages do.")
def metrics(workdir: str, status_dir: str | None, port: int | None, host: str, textfile: str | None,
            interval_s: float, tls_cert: str | None, tls_key: str | None, client_ca: str | None,
            insecure: bool, status_file: str | None) -> None:
    """Expose every stage's counters to Prometheus, read from the status files at each scrape.

    Every number a stage writes to its status file becomes a gauge ``ptychosteer_<stage>_<key>`` (nested
    objects flattened into the name, an object of numbers as a ``key`` label), its text values the labels of
    ``ptychosteer_<stage>_info``, and ``ptychosteer_<stage>_status_age_seconds`` says how long ago the stage last
    wrote. Runs until Ctrl-C or SIGTERM. Example: ``ptychosteer metrics runs/pipeline --port 9810``.
    """
    from ptychosteer.metrics import registry_for
    from ptychosteer.status import write_status

    if port is None and textfile is None:
        raise click.UsageError("give --port (HTTP for Prometheus), --textfile (node_exporter), or both")
    if bool(tls_cert) != bool(tls_key) or (client_ca and not tls_cert):
        raise click.UsageError("--tls-cert and --tls-key go together, and --client-ca needs them")
    directory = Path(status_dir) if status_dir else Path(workdir) / "status"
    registry = registry_for(directory)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = None
    if port is not None:
        from prometheus_client import start_http_server

        try:
            check_bind(f"tcp://{host}:{port}", "--host", authenticated=bool(client_ca), insecure=insecure)
            server, _ = start_http_server(port, addr=host, registry=registry, certfile=tls_cert, keyfile=tls_key,
                                          client_cafile=client_ca, client_auth_required=bool(client_ca))
        except (ValueError, OSError) as exc:
            raise click.ClickException(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    url = f"{'https' if tls_cert else 'http'}://{host}:{server.server_address[1]}/metrics" if server else ""
    if url:
        click.echo(f"serving the status files of {directory} at {url}")
    write_status(status_file, "metrics", {"endpoint": url, "textfile": textfile or ""})

    def write_textfile(first: bool = False) -> None:
        from prometheus_client import write_to_textfile

        try:
            if first:
                Path(textfile).parent.mkdir(parents=True, exist_ok=True)
            write_to_textfile(textfile, registry)
        except OSError as exc:
            if first:  # a wrong path: said at once
                raise click.ClickException(f"cannot write {textfile}: {exc}") from exc
            logging.getLogger("ptychosteer.metrics").warning("cannot write %s (%s); trying again in %.1f s",
                                                             textfile, exc, interval_s)

    try:
        if textfile:
            write_textfile(first=True)
        while not stop.wait(interval_s if textfile else 3600):
            if textfile:
                write_textfile()
        if textfile:  # the stages' last counters (a pipeline that ended: its final numbers)
            write_textfile()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        write_status(status_file, "metrics", {"endpoint": url, "textfile": textfile or "", "done": True})


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
