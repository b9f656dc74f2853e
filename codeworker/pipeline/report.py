"""What a reviewer reads: the commit message, and the pull request's title and body."""

from __future__ import annotations

from codeworker.executors.base import Outcome
from codeworker.models import Job, TestRun
from codeworker.secrets.findings import SecretFinding

TITLE_LENGTH = 72


def _headline(job: Job) -> str:
    first = job.description.strip().splitlines()[0] if job.description.strip() else job.operation_type
    return first if len(first) <= TITLE_LENGTH else first[: TITLE_LENGTH - 1] + "…"


def commit_message(job: Job, outcome: Outcome) -> str:
    trailer = f"Codeworker-Operation: {job.operation_id}"
    return f"{job.operation_type}: {_headline(job)}\n\n{outcome.summary}\n\n{trailer}\n"


def pr_title(job: Job) -> str:
    return f"[codeworker] {job.operation_type.replace('_', ' ')}: {_headline(job)}"


def _test_line(label: str, run: TestRun | None) -> str:
    if run is None:
        return f"| {label} | no test command | |"
    state = "timed out" if run.timed_out else ("passed" if run.passed else f"failed (exit {run.exit_code})")
    return f"| {label} | `{run.command}` | {state} |"


def pr_body(job: Job, outcome: Outcome, files: list[str], findings: list[SecretFinding]) -> str:
    usage = outcome.usage
    lines = [
        f"**{job.operation_type.replace('_', ' ').capitalize()}** requested: "
        f"{job.description.strip()[:2000]}",
        "",
        "### Summary",
        outcome.summary,
        "",
        "### Files",
        *[f"- `{path}`" for path in files],
        "",
        "### Verification",
        "| | command | result |",
        "|---|---|---|",
        _test_line("before", outcome.verification.before),
        _test_line("after", outcome.verification.after),
        "",
        f"Verified: **{'yes' if outcome.verified else 'no, opened as a draft'}** "
        f"after {outcome.iterations} iteration(s).",
        "",
        "### Usage",
        f"input {usage.input_tokens}, output {usage.output_tokens}, cache read {usage.cache_read_tokens}, "
        f"cache write {usage.cache_write_tokens} tokens; ${usage.cost_usd:.4f}",
    ]
    if findings:
        lines += ["", "### Secret scan (not blocking)"]
        lines += [f"- `{f.path}:{f.line}` {f.rule} ({f.severity}): `{f.redacted}`" for f in findings]
    lines += ["", f"<sub>codeworker operation `{job.operation_id}`</sub>"]
    return "\n".join(lines)
