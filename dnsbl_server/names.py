"""Zone names and where the database is: what every command resolves first. Kept apart from `config`
(its settings classes import most of the server) so that `dnsbl add` starts in a fraction of the time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ConfigError


def default_db() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "dnsbl-server" / "dnsbl.sqlite"


def resolve_db(cli_value: str | None, config_value: str | None = None) -> Path:
    value = cli_value or os.environ.get("DNSBL_DB") or config_value
    return Path(value).expanduser() if value else default_db()


_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def zone_name(text: str) -> str:
    """A zone name, lowercased, without the trailing dot; ConfigError if it is not a hostname."""
    name = text.strip().lower().rstrip(".")
    if not name or len(name) > 253 or not all(_LABEL.match(p) for p in name.split(".")):
        raise ConfigError(f"invalid zone name {text!r}")
    return name
