"""The compose file's commands must be valid ``ptychosteer`` invocations (parsed by click, not executed)."""

from pathlib import Path

import click
import pytest
import yaml

from ptychosteer.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _services():
    return yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]


@pytest.mark.parametrize("name", sorted(_services()))
def test_compose_command_is_a_valid_ptychosteer_invocation(name):
    # files the image holds under /app are this checkout's files
    args = [a.replace("/app/", f"{ROOT}/", 1) if a.startswith("/app/") else a for a in _services()[name]["command"]]
    command = main.get_command(click.Context(main), args[0])
    assert command is not None, f"{name}: unknown subcommand {args[0]!r}"
    with command.make_context(args[0], list(args[1:])) as ctx:  # raises on unknown options and bad values
        assert ctx.params


def test_dockerfile_installs_the_package_as_a_non_root_user():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "USER ptycho" in text and 'ENTRYPOINT ["ptychosteer"]' in text
    for package in ("ptychosteer", "streamer", "buffer", "trainer", "steering"):
        assert f"COPY {package}/ {package}/" in text


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.toml")))
def test_every_example_config_parses(config):
    from ptychosteer.config import from_dict, load_toml
    from ptychosteer.pipeline import PipelineConfig
    from trainer.config import TrainerConfig

    data = load_toml(ROOT / "configs" / config)
    if "simulator" in data or "ports" in data:
        assert isinstance(from_dict(PipelineConfig, data, "pipeline"), PipelineConfig)
    else:
        assert isinstance(from_dict(TrainerConfig, data["trainer"], "trainer"), TrainerConfig)


def test_a_pipeline_config_error_is_reported_before_anything_starts(tmp_path):
    from click.testing import CliRunner

    bad = tmp_path / "bad.toml"
    bad.write_text("nproc = 2\n[simulator]\nscans = 'many'\n")
    result = CliRunner().invoke(main, ["launch", "--config", str(bad)])
    assert result.exit_code == 2 and "simulator.scans must be int" in result.output
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("nprocs = 2\n")
    result = CliRunner().invoke(main, ["launch", "--config", str(unknown)])
    assert result.exit_code == 2 and "unknown key(s) ['nprocs']" in result.output
