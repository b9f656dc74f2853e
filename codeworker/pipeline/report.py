"""What a reviewer reads: the commit message, and the pull request's title and body."""

from __future__ import annotations

from codeworker.executors.base import Outcome
from codeworker.models import Job, TestRun, Verification
from codeworker.secrets.findings import SecretFinding

TITLE_LENGTH = 72


def _headline(job: Job) -> str:
    first = job.description.strip().splitlines()[0] if job.description.strip() else job.operation_type
    return first if len(first) <= TITLE_LENGTH else first[: TITLE_LENGTH - 1] + "…"


def commit_message(job: Job, outcome: Outcome) -> str:
    trailer = f"Codeworker-Operation: {job.operation_id}"
    if job.revision is not None:
        return (
            f"{job.operation_type}: revision {job.revision.number}: {_headline(job)}\n\n"
            f"{outcome.summary}\n\n{trailer}\nCodeworker-Revision-Of: {job.revision.of_operation}\n"
        )
    return f"{job.operation_type}: {_headline(job)}\n\n{outcome.summary}\n\n{trailer}\n"


def pr_title(job: Job) -> str:
    return f"[codeworker] {job.operation_type.replace('_', ' ')}: {_headline(job)}"


def _test_line(label: str, run: TestRun | None) -> str:
    if run is None:
        return f"| {label} | no test command | |"
    state = "timed out" if run.timed_out else ("passed" if run.passed else f"failed (exit {run.exit_code})")
    return f"| {label} | `{run.command}` | {state} |"


EVIDENCE_ROWS = (
    ("fixed", "failed before, pass now"),
    ("reproduced", "new or changed, fail on the base code, pass now"),
    ("pass_on_base", "new or changed, pass on the base code too (prove nothing)"),
    ("regressions", "passed before, not now"),
    ("flaky", "flipped on the same code (neither evidence nor regression)"),
)
"""The evidence lists of a :class:`Verification`, as the pull request's table names them."""

TESTS_SHOWN = 10
"""Test ids one row of the evidence table lists before it says how many more."""


def evidence_table(verification: Verification) -> list[str]:
    """The verdict and its evidence as Markdown: the runs, then one row per kind of evidence."""
    lines = [
        "| | command | result |",
        "|---|---|---|",
        _test_line("before", verification.before),
        _test_line("after", verification.after),
        "",
    ]
    rows = [
        (label, getattr(verification, name)) for name, label in EVIDENCE_ROWS if getattr(verification, name)
    ]
    if rows:
        lines += ["| evidence | tests |", "|---|---|"]
        for label, tests in rows:
            shown = ", ".join(f"`{test}`" for test in tests[:TESTS_SHOWN])
            more = f" and {len(tests) - TESTS_SHOWN} more" if len(tests) > TESTS_SHOWN else ""
            lines.append(f"| {label} | {shown}{more} |")
        lines.append("")
    if verification.reasons:
        lines += ["Not verified:", *[f"- {reason}" for reason in verification.reasons], ""]
    return lines


def pr_body(
    job: Job, outcome: Outcome, verification: Verification, files: list[str], findings: list[SecretFinding]
) -> str:
    usage = outcome.usage
    lines = [
        f"**{job.operation_type.replace('_', ' ').capitalize()}** requested: "
        f"{job.description.strip()[:2000]}",
        "",
        *([f"Fixes #{job.issue_number}", ""] if job.issue_number else []),
        "### Summary",
        outcome.summary,
        "",
        "### Files",
        *[f"- `{path}`" for path in files],
        "",
        "### Verification",
        *evidence_table(verification),
        f"Verified: **{'yes' if verification.verified else 'no, opened as a draft'}** "
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
