"""Progress bars and console lines of a training run, passed to the loop explicitly.

``Reporter`` prints result lines on rank 0 when it has a console, and draws one rich progress bar
per model while models train (started with the first bar, so lines printed before training stay
plain). Without a console, or on ranks > 0, every method is a no-op.
"""

from __future__ import annotations

from typing import Any


class Reporter:
    def __init__(self, console=None, *, progress: bool = True, is_main: bool = True) -> None:
        self.console = console if is_main else None
        self.show_progress = bool(progress and self.console is not None)
        self._progress = None

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def add_bar(self, description: str, total: int, completed: int = 0) -> Any:
        """A progress bar (its handle for ``advance``); None when nothing is drawn."""
        if not self.show_progress:
            return None
        if self._progress is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=self.console, transient=False)
            self._progress.__enter__()
        return self._progress.add_task(description, total=total, completed=completed)

    def advance(self, bar: Any, description: str, steps: int = 1) -> None:
        if self._progress is not None and bar is not None:
            self._progress.update(bar, advance=steps, description=description)

    def print(self, message: str, *, soft_wrap: bool = False) -> None:
        if self.console is not None:
            (self._progress.console if self._progress else self.console).print(message, highlight=False,
                                                                                soft_wrap=soft_wrap)
