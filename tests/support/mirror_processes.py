"""What a worker process does in the tests of mirrors shared between processes: check out a branch.

``checkout_in_process`` runs in a spawned process (tests/test_workspace.py starts two sharing one
workspace root), so it lives in a module the child imports by name.
"""

from __future__ import annotations

import threading
from pathlib import Path

from pydantic import SecretStr

from codeworker.git.mirrors import Mirrors
from tests.conftest import GITHUB_TOKEN


def checkout_in_process(root: str, url: str, index: int, barrier: threading.Barrier) -> tuple[str, str]:
    mirrors = Mirrors(Path(root), SecretStr(GITHUB_TOKEN))
    barrier.wait()
    wt = mirrors.checkout(url, "main", f"codeworker/p{index}", f"op-p{index}", "a1")
    return str(wt.path), (wt.path / "README.md").read_text()
