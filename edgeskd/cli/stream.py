"""`edgeskd stream` — not available yet (filled in by its issue)."""

from __future__ import annotations

from edgeskd.cli.common import cli_command
from edgeskd.errors import NotAvailableYet


@cli_command
def stream() -> None:
    """Not available yet."""
    raise NotAvailableYet("`edgeskd stream` is not available yet in this version")
