"""`edgeskd synth` — not available yet (filled in by its issue)."""

from __future__ import annotations

from edgeskd.cli.common import cli_command
from edgeskd.errors import NotAvailableYet


@cli_command
def synth() -> None:
    """Not available yet."""
    raise NotAvailableYet("`edgeskd synth` is not available yet in this version")


