"""README statements a test can check: the command table lists every command, every `--option` the
README names exists in some command, every command's help renders without internal names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from edgeskd.cli.app import app
from edgeskd.cli.commands import tidy_help

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _commands() -> dict:
    return tidy_help(typer.main.get_command(app)).commands


def test_every_command_is_in_the_cli_table():
    table = README[README.index("## CLI at a glance"):README.index("**Conventions")]
    listed = set(re.findall(r"\| `edgeskd ([a-z-]+)", table))
    assert listed == set(_commands()), (set(_commands()) ^ listed)


def test_every_option_named_in_readme_exists():
    known = {opt for cmd in _commands().values() for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
    known |= {"--help", "--version", "--nproc-per-node", "--system-site-packages", "--model-repository"}
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", README))
    # pip / docker / torchrun / pytest options in shell lines are not edgeskd's
    foreign = {"--budget", "--only", "--logdir", "--upgrade", "--index-url", "--extra-index-url", "--no-deps", "--gpus", "--rm", "--net", "--shm-size"}
    missing = sorted(named - known - foreign)
    assert not missing, f"README names options no command has: {missing}"


@pytest.mark.parametrize("name", sorted(_commands()))
def test_help_renders_without_internal_names(name, monkeypatch, capsys):
    import sys

    from edgeskd.cli.app import main

    monkeypatch.setattr(sys, "argv", ["edgeskd", name, "--help"])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr().out
    assert e.value.code == 0 and "Usage: edgeskd" in out, out
    for internal in ("<bool>", "DEFAULT_", "TrainConfig", "None]"):
        assert internal not in out, (name, internal)
