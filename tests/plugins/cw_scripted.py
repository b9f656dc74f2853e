"""A test-only executor plugin: applies the change a test writes into the job's description.

The description is JSON: ``{"write": {path: content}, "delete": [path], "gate": fifo, "verified": bool,
"lock": [path]}``. ``gate`` names a FIFO the executor opens for reading before it writes, which
blocks until the test opens it for writing: a test can hold a job mid-run without sleeping.
"""

from __future__ import annotations

import json
from pathlib import Path

from codeworker.executors.base import Outcome, Workspace
from codeworker.models import Job, TestRun, Verification


class ScriptedExecutor:
    name = "scripted"

    def run(self, job: Job, workspace: Workspace) -> Outcome:
        script = json.loads(job.description)
        for path in script.get("lock", []):
            workspace.lock(path)
        if gate := script.get("gate"):
            Path(gate).read_text()
        for path, content in script.get("write", {}).items():
            workspace.write_file(path, content)
        for path in script.get("delete", []):
            workspace.lock(path)
            workspace.resolve(path).unlink()
        command = workspace.test_command()
        after = None
        if command:
            run = workspace.run(command)
            after = TestRun(
                command=command, exit_code=run.exit_code, passed=run.ok, output_tail=run.output[-500:]
            )
        return Outcome(
            summary=f"scripted change to {len(workspace.changed_files())} file(s)",
            iterations=1,
            verified=script.get("verified", True),
            verification=Verification(before=None, after=after),
        )
