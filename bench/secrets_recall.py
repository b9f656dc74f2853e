"""Recall of the secret rule pack on a labelled development set, per rule family.

    .venv/bin/python -m bench.secrets_recall [--examples PATH]

The set (``/work/shared/secrets-dev/examples.jsonl.gz``, from noseyparker's rule examples) holds
lines labelled ``secret`` or ``not_secret`` for a rule such as ``np.github.1``; the family is the
middle part (``github``). Every example is scanned exactly as given, as one file of one run of the
real :class:`~codeworker.secrets.scanner.SecretScanner` (a multi-line example keeps its lines). Nothing is
added around a bare token: a rule that needs a keyword before the value (AWS secret keys, Twilio
secrets, generic passwords) is credited only where the example has one, as it would be in a real
diff. An example counts as found when its file has a finding of any rule.

Columns: secret examples, how many got a HIGH finding (would block) and how many got any finding;
not_secret examples, how many got a HIGH finding (false blocks) and any finding. Some not_secret
lines are near misses for one rule but real credentials of a sibling kind (a Slack user token
listed as "not a bot token"); the "sibling" column counts the false blocks whose exact text the set
also labels ``secret`` under another rule.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from codeworker.secrets.findings import SecretFinding, blocking
from codeworker.secrets.scanner import SecretScanner

DEFAULT_EXAMPLES = Path("/work/shared/secrets-dev/examples.jsonl.gz")
"""The development set; it stays outside the repository, which holds no credential-shaped text."""

NAMED_FAMILIES = frozenset(
    {
        "pem",
        "aws",
        "github",
        "gitlab",
        "anthropic",
        "openai",
        "huggingface",
        "npm",
        "pypi",
        "slack",
        "stripe",
        "google",
        "azure",
        "sendgrid",
        "twilio",
        "telegram",
        "digitalocean",
        "hashicorp",
        "age",
        "postgres",
        "mongodb",
    }
)
"""Dev-set families of the vendors issue 5 names (private keys are noseyparker's ``pem``)."""

SCAN_TIMEOUT = 600.0
"""Seconds for the one scanner run over the whole set (it takes a few seconds)."""


@dataclass(frozen=True)
class Example:
    """One labelled example of the development set."""

    family: str
    secret: bool
    text: str


@dataclass
class Tally:
    """Counts for one family (or a total)."""

    secrets: int = 0
    secret_high: int = 0
    secret_any: int = 0
    negatives: int = 0
    negative_high: int = 0
    negative_high_sibling: int = 0
    negative_any: int = 0

    def add(self, other: Tally) -> None:
        self.secrets += other.secrets
        self.secret_high += other.secret_high
        self.secret_any += other.secret_any
        self.negatives += other.negatives
        self.negative_high += other.negative_high
        self.negative_high_sibling += other.negative_high_sibling
        self.negative_any += other.negative_any


def load_examples(path: Path = DEFAULT_EXAMPLES) -> list[Example]:
    """The examples in file order."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines if line.strip()]
    return [
        Example(
            family=record["rule_id"].split(".")[1], secret=record["label"] == "secret", text=record["text"]
        )
        for record in records
    ]


def example_lines(text: str) -> list[tuple[int, str]]:
    """An example as added lines of a file: its own lines, numbered from 1."""
    return [(number, line) for number, line in enumerate(text.splitlines() or [""], start=1)]


def scan_examples(examples: Sequence[Example], scanner: SecretScanner) -> list[list[SecretFinding]]:
    """Findings per example, from one scanner run with one file per example."""
    paths = [f"examples/{index:04d}.txt" for index in range(len(examples))]
    findings = scanner.scan({path: example_lines(e.text) for path, e in zip(paths, examples, strict=True)})
    by_path: dict[str, list[SecretFinding]] = {path: [] for path in paths}
    for finding in findings:
        by_path[finding.path].append(finding)
    return [by_path[path] for path in paths]


def tally(examples: Sequence[Example], findings: Sequence[Sequence[SecretFinding]]) -> dict[str, Tally]:
    """Per-family counts, families sorted by name."""
    secret_texts = {example.text for example in examples if example.secret}
    tallies: dict[str, Tally] = {}
    for example, found in zip(examples, findings, strict=True):
        counts = tallies.setdefault(example.family, Tally())
        high, anything = bool(blocking(found)), bool(found)
        if example.secret:
            counts.secrets += 1
            counts.secret_high += high
            counts.secret_any += anything
        else:
            counts.negatives += 1
            counts.negative_high += high
            counts.negative_high_sibling += high and example.text in secret_texts
            counts.negative_any += anything
    return dict(sorted(tallies.items()))


def total(tallies: Mapping[str, Tally], families: Iterable[str] | None = None) -> Tally:
    """The sum over ``families`` (all when None)."""
    wanted = set(tallies if families is None else families)
    result = Tally()
    for family, counts in tallies.items():
        if family in wanted:
            result.add(counts)
    return result


def measure(path: Path = DEFAULT_EXAMPLES, scanner: SecretScanner | None = None) -> dict[str, Tally]:
    """Scan the development set and count per family."""
    examples = load_examples(path)
    return tally(examples, scan_examples(examples, scanner or SecretScanner(timeout=SCAN_TIMEOUT)))


def _ratio(part: int, whole: int) -> str:
    return f"{part:3d}/{whole:<3d} {100 * part / whole:5.1f}%" if whole else f"{'-':>15}"


def _row(name: str, counts: Tally) -> str:
    return (
        f"{name:<22} {_ratio(counts.secret_high, counts.secrets)}"
        f"  {_ratio(counts.secret_any, counts.secrets)}"
        f"   {_ratio(counts.negative_high, counts.negatives)}  {counts.negative_high_sibling:7d}"
        f"  {_ratio(counts.negative_any, counts.negatives)}"
    )


def render(tallies: Mapping[str, Tally]) -> str:
    """The table: one row per family, then totals over all and over the named vendors."""
    header = (
        f"{'family':<22} {'recall HIGH':>15}  {'recall any':>15}   {'false blocks':>15}  {'sibling':>7}"
        f"  {'not_secret any':>15}"
    )
    lines = [header, "-" * len(header)]
    lines += [_row(family, counts) for family, counts in tallies.items()]
    lines.append("-" * len(header))
    lines.append(_row("total", total(tallies)))
    named = sorted(NAMED_FAMILIES & set(tallies))
    lines.append(_row(f"named vendors ({len(named)})", total(tallies, named)))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=Path, default=DEFAULT_EXAMPLES, help="examples.jsonl.gz to scan")
    args = parser.parse_args()
    print(render(measure(args.examples)))


if __name__ == "__main__":
    main()
