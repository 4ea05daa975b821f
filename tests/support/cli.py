"""The `wan-serve` console script, run as a user runs it: in a subprocess, told the service's URL (and key) by the
environment, never by this process's own WAN_API_KEY."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CLI = Path(sys.executable).with_name("wan-serve")


def wan(url: str, *args: str | Path, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WAN_BASE_URL": url, "COLUMNS": "160"}
    env.pop("WAN_API_KEY", None)
    if key:
        env["WAN_API_KEY"] = key
    return subprocess.run([CLI, *map(str, args)], env=env, capture_output=True, text=True, timeout=300)
