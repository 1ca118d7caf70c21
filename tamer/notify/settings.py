"""Notifications for a whole home and the daemon's queue: `HOME/notify.yaml`, or the file `tamer daemon
--notify-config FILE` names (which the daemon hands its jobs in TAMER_NOTIFY_CONFIG).

The file holds the keys of a run's `notify:` section at its top level (webhook, command, email, events,
...). Every supervisor of the home adds its targets to the run's own; a target named in both gets each
notification once.
"""

from __future__ import annotations

import os
from pathlib import Path

from tamer.config import NotifyConfig, load_yaml
from tamer.errors import ConfigError

HOME_FILE = "notify.yaml"
ENVIRONMENT = "TAMER_NOTIFY_CONFIG"


def load(path: Path) -> NotifyConfig:
    """The notify config in the YAML file `path`, or a one-line ConfigError naming the file and the key."""
    data = load_yaml(path)
    if "notify" in data and isinstance(data["notify"], dict) and len(data) == 1:
        raise ConfigError(
            f"{path}: put the notify keys (webhook, command, email, events ...) at the top level, without `notify:`"
        )
    try:
        return NotifyConfig.from_mapping(data)
    except ConfigError as error:
        raise ConfigError(f"{path}: notify.{error}") from None


def home_notify(root: Path, override: Path | None = None) -> NotifyConfig | None:
    """The home-wide notify config: `override` (the daemon's --notify-config), else the file in TAMER_NOTIFY_CONFIG
    (set by the daemon for its jobs), else HOME/notify.yaml when it exists; None when there is none."""
    named = override or (Path(os.environ[ENVIRONMENT]) if os.environ.get(ENVIRONMENT) else None)
    if named is not None:
        if not named.is_file():
            raise ConfigError(f"--notify-config {named}: no such file")
        return load(named)
    path = root / HOME_FILE
    return load(path) if path.is_file() else None
