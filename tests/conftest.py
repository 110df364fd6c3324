"""Shared fixtures. Tests keep to small generated data and 1 torch thread (CI has 2 cores)."""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _has_gpu() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU; none on this machine")
    for item in items:
        # the marker, not ``"gpu" in item.keywords``: keywords also hold the names of the parent
        # nodes, so a checkout in a directory called "gpu" would skip every test
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(1)
    yield


@pytest.fixture
def cli():
    """Invoke the typer app in-process: cli("info", "DATA") → click Result."""
    from typer.testing import CliRunner

    from edgeskd.cli.app import app

    runner = CliRunner()

    def invoke(*args: str, **kw):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, **kw)

    return invoke
