"""``ptychosteer metrics``: the status files as Prometheus gauges, over HTTP (mutual TLS off loopback) or a
node_exporter text file; no status file can stop it."""

import json
import math
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ptychosteer.cli import main
from ptychosteer.metrics import MAX_LABEL_CHARS, registry_for
from ptychosteer.status import write_status
from streamer.netsec import check_bind


def _scrape(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_number_of_a_status_file_is_a_gauge_and_each_scrape_reads_the_files_again(tmp_path):
    write_status(tmp_path / "ingest.json", "ingest", {"received": 5, "malformed": 0, "done": True, "detector": "tcp://x:1"})
    write_status(tmp_path / "trainer.json", "trainer", {
        "steps": 40, "tasks": [1, 2], "catch_up": {"replayed_frames": 3, "replayed_series": [1]},
        "metrics": {"final_error": {"0": 0.25, "1": 0.5}, "region": "full"}, "loss": float("nan")})
    registry = registry_for(tmp_path)
    got = _scrape(generate_latest(registry).decode())
    assert got[("ptychosteer_ingest_received", ())] == 5 and got[("ptychosteer_ingest_done", ())] == 1
    assert got[("ptychosteer_trainer_steps", ())] == 40
    assert got[("ptychosteer_trainer_catch_up_replayed_frames", ())] == 3
    assert got[("ptychosteer_trainer_metrics_final_error", (("key", "1"),))] == 0.5
    assert math.isnan(got[("ptychosteer_trainer_loss", ())])
    assert 0 <= got[("ptychosteer_ingest_status_age_seconds", ())] < 60
    assert not any("detector" in name or "tasks" in name or "pid" in name for name, _ in got)  # lists, pid
    assert got[("ptychosteer_ingest_info", (("detector", "tcp://x:1"),))] == 1  # text: the labels of an info metric
    assert got[("ptychosteer_trainer_info", (("metrics_region", "full"),))] == 1
    write_status(tmp_path / "ingest.json", "ingest", {"received": 9})
    assert _scrape(generate_latest(registry).decode())[("ptychosteer_ingest_received", ())] == 9


def test_a_status_file_that_is_not_an_object_or_reuses_a_name_is_counted_not_fatal(tmp_path):
    (tmp_path / "odd.json").write_text("[1, 2]")
    (tmp_path / "metrics.json").write_text('{"skipped_total": 99, "done": true}')  # the exporter's own name
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)  # json's own recursion limit
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "twice.json").write_text(json.dumps({"a-b": 1, "a_b": 2, "c": {"d": 3, "e": "text"}, "c_d": 4,
                                                     "f-g": "x", "f_g": "y", "7": "z", "long": "w" * 1000}))
    (tmp_path / "info.json").write_text(json.dumps({"info": 5, "name": "text"}))  # a number took the info name
    (tmp_path / "odd_text.json").write_text('{"\\ud800": {"x\\udfff": 1}, "big": 1e999, "huge": %d}' % 10**400)
    got = _scrape(generate_latest(registry_for(tmp_path)).decode())
    assert got[("ptychosteer_odd_text", (("key", "x\\udfff"),))] == 1  # a lone surrogate, escaped
    assert got[("ptychosteer_odd_text_big", ())] == math.inf == got[("ptychosteer_odd_text_huge", ())]
    assert got[("ptychosteer_twice_a_b", ())] == 1 and got[("ptychosteer_twice_c_d", ())] == 3
    assert got[("ptychosteer_metrics_done", ())] == 1
    info = dict(next(labels for name, labels in got if name == "ptychosteer_twice_info"))
    assert info == {"c_e": "text", "f_g": "x", "k_7": "z", "long": "w" * MAX_LABEL_CHARS}
    assert got[("ptychosteer_info_info", ())] == 5
    # odd, broken and deep.json; a_b, c_d, f_g, info.json's info, skipped_total
    assert got[("ptychosteer_metrics_skipped_total", ())] == 8


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=4), max_leaves=20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(st.text(max_size=10), _json, max_size=6), stage=st.text(min_size=1, max_size=8))
def test_any_json_in_a_status_file_gives_a_parseable_exposition(tmp_path, body, stage):
    name = "".join(c for c in stage if c.isascii() and c.isalnum()) or "s"
    for f in tmp_path.glob("*.json"):
        f.unlink()
    (tmp_path / f"{name}.json").write_text(json.dumps(body))
    text = generate_latest(registry_for(tmp_path)).decode()
    got = _scrape(text)  # parses back
    for key, value in body.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key.isidentifier() \
                and key.isascii() and key not in ("stage", "time", "pid") and math.isfinite(value):
            found = got.get((f"ptychosteer_{name}_{key}".replace("__", "_"), ()))
            if found is not None:  # (a name another key took first is counted as skipped)
                assert found == pytest.approx(float(value), rel=1e-12)

    def texts(obj):
        for value in obj.values():
            yield from texts(value) if isinstance(value, dict) else [value] if isinstance(value, str) else []

    fields = {k: v for k, v in body.items() if k not in ("stage", "time", "pid")}
    info = [dict(labels) for n, labels in got if n == f"ptychosteer_{name}_info"]
    assert bool(info) >= any(True for _ in texts(fields))  # texts: the info metric (or a number that took its name)
    if info and got[(f"ptychosteer_{name}_info", tuple(sorted(info[0].items())))] == 1 and "key" not in info[0]:
        # every label is one of the file's texts (where two keys map to one name, the first one's)
        assert set(info[0].values()) <= {t[:MAX_LABEL_CHARS] for t in texts(fields)}


def _serve(tmp_path, *extra):
    proc = subprocess.Popen([sys.executable, "-m", "ptychosteer.cli", "metrics", str(tmp_path), "--port", "0",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "/metrics" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, line.split()[-1]


def _stop(proc):
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_metrics_serves_the_pipelines_status_over_http_until_sigterm(tmp_path):
    write_status(tmp_path / "status" / "steering.json", "steering", {"decisions": 7, "lag_ms": 12.5})
    proc, url = _serve(tmp_path)
    try:
        assert url.startswith("http://127.0.0.1:")
        got = _scrape(urllib.request.urlopen(url, timeout=30).read().decode())
        assert got[("ptychosteer_steering_decisions", ())] == 7 and got[("ptychosteer_steering_lag_ms", ())] == 12.5
    finally:
        _stop(proc)


def test_metrics_writes_a_textfile_for_node_exporter(tmp_path):
    write_status(tmp_path / "status" / "ingest.json", "ingest", {"received": 11})
    prom = tmp_path / "textfile" / "ptychosteer.prom"
    prom.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "ptychosteer.cli", "metrics", str(tmp_path), "--textfile",
                             str(prom), "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while not prom.exists():  # the first write comes at start
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.05)
        assert _scrape(prom.read_text())[("ptychosteer_ingest_received", ())] == 11
        shutil.rmtree(prom.parent)
        prom.parent.write_text("")  # a later write fails (the folder is a file now): said, and the exporter goes on
        assert "cannot write" in proc.stderr.readline()
        prom.parent.unlink()
        prom.parent.mkdir()
        write_status(tmp_path / "status" / "ingest.json", "ingest", {"received": 12})
        while not prom.exists() or _scrape(prom.read_text())[("ptychosteer_ingest_received", ())] != 12:
            assert proc.poll() is None and time.monotonic() < deadline + 60
            time.sleep(0.05)
    finally:
        _stop(proc)


def test_metrics_refuses_a_network_address_without_client_certificates_and_needs_an_output(tmp_path):
    result = CliRunner().invoke(main, ["metrics", str(tmp_path), "--port", "0", "--host", "0.0.0.0"])
    assert result.exit_code == 1 and "without authentication" in result.output
    result = CliRunner().invoke(main, ["metrics", str(tmp_path)])
    assert result.exit_code == 2 and "--port" in result.output and "--textfile" in result.output
    (tmp_path / "ca.pem").write_text("")
    result = CliRunner().invoke(main, ["metrics", str(tmp_path), "--port", "0", "--client-ca",
                                       str(tmp_path / "ca.pem")])
    assert result.exit_code == 2 and "--client-ca needs" in result.output


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate it signed, and a self-signed stranger."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make test certificates")
    k = tmp_path_factory.mktemp("keys")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=k)
    for who, cn in (("server", "127.0.0.1"), ("client", "scraper"), ("stranger", "stranger")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{who}.key", "-out",
                 f"{who}.csr", cwd=k)
        if who == "stranger":  # self-signed: not by the CA
            _openssl("x509", "-req", "-in", f"{who}.csr", "-signkey", f"{who}.key", "-days", "1", "-out",
                     f"{who}.pem", cwd=k)
            continue
        (k / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "1", "-extfile", "san.ext", "-out", f"{who}.pem", cwd=k)
    return k


def _fetch(url, k, who):
    ctx = ssl.create_default_context(cafile=str(k / "ca.pem"))
    if who:
        ctx.load_cert_chain(str(k / f"{who}.pem"), str(k / f"{who}.key"))
    return urllib.request.urlopen(url, timeout=30, context=ctx).read().decode()


def _only_the_ca_signed_scraper_is_answered(url, k):
    assert url.startswith("https://")
    assert _scrape(_fetch(url, k, "client"))[("ptychosteer_ingest_received", ())] == 3
    for who in (None, "stranger"):
        with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
            _fetch(url, k, who)


def test_with_client_certificates_only_a_scraper_the_ca_signed_is_answered(tmp_path, certs):
    """--client-ca: mutual TLS, the authentication that lets the exporter listen beyond loopback."""
    k = certs
    write_status(tmp_path / "status" / "ingest.json", "ingest", {"received": 3})
    proc, url = _serve(tmp_path, "--tls-cert", str(k / "server.pem"), "--tls-key", str(k / "server.key"),
                       "--client-ca", str(k / "ca.pem"))
    try:
        _only_the_ca_signed_scraper_is_answered(url, k)
    finally:
        _stop(proc)


def test_launch_serves_metrics_beyond_loopback_only_with_client_certificates(tmp_path, certs):
    """``metrics_host`` puts the exporter on the network (Prometheus on another node) while the stages stay on
    loopback: without the TLS files (or insecure) the config is refused before anything starts; with them the
    exporter command ``launch`` builds (run here on loopback) answers only a scraper the CA signed."""
    from ptychosteer.pipeline import Pipeline, PipelineConfig

    k = certs
    tls = {"metrics_tls_cert": str(k / "server.pem"), "metrics_tls_key": str(k / "server.key"),
           "metrics_client_ca": str(k / "ca.pem")}
    for bad, message in [({"metrics_host": "0.0.0.0"}, "without authentication"),
                         ({**tls, "metrics_tls_key": ""}, "go together"),
                         ({**tls, "metrics_client_ca": str(k / "missing.pem")}, "is not a file")]:
        with pytest.raises(ValueError, match=message):
            PipelineConfig(workdir=str(tmp_path), metrics=True, **bad)
    with pytest.raises(ValueError, match="need metrics = true"):
        PipelineConfig(workdir=str(tmp_path), metrics_host="0.0.0.0", **tls)
    config = PipelineConfig(workdir=str(tmp_path), metrics=True, metrics_host="0.0.0.0", **tls)
    assert config.host == "127.0.0.1"  # the stages' endpoints stay on loopback
    command = Pipeline(config).command("metrics")
    assert "--insecure" not in command and command[command.index("--host") + 1] == "0.0.0.0"
    # the bind check passes 0.0.0.0 with client certificates and refuses it without (before any bind)
    check_bind("tcp://0.0.0.0:9", "--host", authenticated=True)
    with pytest.raises(ValueError, match="without authentication"):
        check_bind("tcp://0.0.0.0:9", "--host")
    # the command itself is run on loopback: a test must not listen on every interface of the host (CI machines),
    # and the exporter's TLS settings, what this checks, do not depend on the address
    write_status(tmp_path / "status" / "ingest.json", "ingest", {"received": 3})
    command[command.index("--host") + 1] = "127.0.0.1"
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "https://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        _only_the_ca_signed_scraper_is_answered(line.split()[-1], k)
    finally:
        _stop(proc)
