import logging

import pytest
from click.testing import CliRunner

from ptychosteer.cli import main
from streamer.netsec import check_bind, is_local


@pytest.mark.parametrize("endpoint, local", [
    ("tcp://127.0.0.1:5560", True), ("tcp://127.8.9.1:0", True), ("tcp://localhost:1", True), ("tcp://[::1]:5", True),
    ("ipc:///tmp/x", True), ("inproc://x", True), ("tcp://0.0.0.0:5560", False), ("tcp://*:5560", False),
    ("tcp://10.1.2.3:1", False), ("tcp://eth0:1", False), ("tcp://[::]:1", False),
])
def test_which_endpoints_are_local(endpoint, local):
    assert is_local(endpoint) is local


def test_an_open_bind_needs_authentication_or_an_explicit_insecure(caplog):
    with pytest.raises(ValueError, match="without authentication.*--insecure"):
        check_bind("tcp://0.0.0.0:5580", "the decision feed")
    check_bind("tcp://0.0.0.0:5580", "the decision feed", authenticated=True)
    with caplog.at_level(logging.WARNING):
        check_bind("tcp://0.0.0.0:5580", "the decision feed", insecure=True)
    assert "INSECURE" in caplog.text


@pytest.mark.parametrize("args", [
    ["simulate", "--endpoint", "tcp://0.0.0.0:0"],
    ["ingest", "--live-endpoint", "tcp://0.0.0.0:0"],
    ["ingest", "--train-endpoint", "tcp://*:0"],
    ["ingest", "--notice-endpoint", "tcp://0.0.0.0:0"],
    ["label", "--recording", "r.h5", "--notice-endpoint", "tcp://0.0.0.0:0"],
    ["steer", "--feed", "tcp://0.0.0.0:0"],
    ["train", "--announce", "tcp://0.0.0.0:0"],
])
def test_every_stage_refuses_an_open_bind_before_it_starts(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "without authentication" in result.output, result.output


def test_a_pipeline_on_an_open_host_needs_insecure():
    from ptychosteer.pipeline import PipelineConfig

    with pytest.raises(ValueError, match="insecure"):
        PipelineConfig(host="0.0.0.0")
    assert PipelineConfig(host="0.0.0.0", insecure=True).insecure
