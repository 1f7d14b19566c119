"""Whether a W&B API key is configured: the one rule that training (W&B mode `auto`) and the
analysis (reading runs through the W&B API) both follow. No import of wandb."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from urllib.parse import urlparse


def wandb_key_present() -> bool:
    """True when WANDB_API_KEY is set, or a netrc file (NETRC, default ~/.netrc) has an entry
    for the W&B host (WANDB_BASE_URL, default api.wandb.ai)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    netrc_path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(netrc_path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False
