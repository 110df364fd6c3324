"""Library exceptions. The CLI maps each to a one-line message and an exit code (cli/common.py).

Raise these for anything a user can cause (bad path, bad option, bad file); plain Python
exceptions are left for programming errors, which should surface as tracebacks.
"""

from __future__ import annotations


class EdgeSKDError(Exception):
    """Base class: the message must say what is wrong and what to do."""

    exit_code = 1


class UsageError(EdgeSKDError):
    """An option or argument value is invalid."""

    exit_code = 2


class DataError(EdgeSKDError):
    """A data set is missing, malformed or inconsistent."""

    exit_code = 3


class ArtifactError(EdgeSKDError):
    """A checkpoint / ONNX / engine file is missing, corrupt, or lacks metadata."""

    exit_code = 4


class BackendUnavailable(EdgeSKDError):
    """A requested backend (TensorRT, CUDA, a GPU) is not present on this machine."""

    exit_code = 5


class AccuracyGateError(EdgeSKDError):
    """A quantized artifact lost more accuracy than allowed."""

    exit_code = 6


class VideoError(EdgeSKDError):
    """A video source cannot be opened or decoded."""

    exit_code = 7


class TrainingDiverged(EdgeSKDError):
    """A training loss became NaN or infinite."""

    exit_code = 8


class ServerError(EdgeSKDError):
    """A model server (Triton) cannot be reached, does not serve the model, refuses a request, or
    cannot start (a port in use)."""

    exit_code = 10


class ServerLost(ServerError):
    """The server stopped answering in the middle of a stream (the outputs cover the frames before)."""


class UnknownModelError(UsageError, ValueError):
    """An unknown model name (a UsageError for the CLI, a ValueError for library callers)."""
