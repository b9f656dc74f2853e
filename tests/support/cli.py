"""Running the ``codeworker`` command as a user would, in a process of its own."""

from __future__ import annotations

import os
import subprocess

from codeworker.loopback.worker import BIN
from tests.support.jobs import RESULT_TIMEOUT
from tests.support.worker import PLUGINS


def codeworker(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env, "PYTHONPATH": str(PLUGINS)}
    return subprocess.run(
        [str(BIN / "codeworker"), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=RESULT_TIMEOUT,
        check=check,
    )
