"""``autofix``: ruff's safe fixes and formatting; the worker verifies them by the operation type's
rule (for a refactor: an unchanged test outcome).

A deterministic executor with no model behind it: it proves the plugin registry with a second
kind of executor and gives the demo something real to push.
"""

from __future__ import annotations

from ruff.__main__ import find_ruff_bin

from codeworker.executors.base import Outcome, Workspace
from codeworker.models import Job


class AutofixExecutor:
    """Runs ``ruff check --fix`` and ``ruff format`` on the target files (or every Python file)."""

    name = "autofix"

    def run(self, job: Job, workspace: Workspace) -> Outcome:
        targets = [path for path in job.target_files if path.endswith((".py", ".pyi"))] or ["."]
        ruff = str(find_ruff_bin())
        # --no-cache: the checkout is thrown away, a cache would only add files to the diff.
        fix = workspace.run([ruff, "check", "--fix", "--exit-zero", "--no-cache", "--quiet", *targets])
        fmt = workspace.run([ruff, "format", "--no-cache", "--quiet", *targets])
        for result in (fix, fmt):
            if result.exit_code not in (0, 1) or result.timed_out:
                raise RuntimeError(f"{result.command} failed: {result.output.strip()[-500:]}")
        changed = workspace.changed_files()
        for path in changed:
            workspace.lock(path)
        summary = (
            f"ruff fixed and formatted {len(changed)} file(s)" if changed else "ruff found nothing to fix"
        )
        return Outcome(summary=summary, iterations=1)
