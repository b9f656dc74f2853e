"""What the secret scan costs a job: its fixed cost, and its throughput against trufflehog3 itself.

    .venv/bin/python -m bench.secrets_scan [--quick]

Fixed cost: the wall time of :meth:`SecretScanner.scan` on a 200-line diff with the scanner process
already running (what every job pays), against running the ``trufflehog3`` command on the same
diff written to a temporary tree (what every job paid before the process was kept). The first
scan of a new scanner (starting its process) is reported in the note.

Throughput: megabytes of added text per second, codeworker's scan (warm) against the floor:
trufflehog3's own ``search`` over the same files, called in-process by the scanner virtualenv's
Python, timing only the search (rules loaded beforehand). The text is generated code-like lines
in files of 2-30 KB with a few planted fake credentials, which the scan must find.
"""

from __future__ import annotations

import json
import random
import string
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from bench import report
from bench.report import Figure, interleaved, median, spread, timed
from codeworker.secrets.findings import SecretFinding, blocking
from codeworker.secrets.process import scanner_env
from codeworker.secrets.scanner import RULES, SecretScanner

Added = dict[str, list[tuple[int, str]]]

SCAN_TIMEOUT = 600.0

FLOOR = """
import json, sys, time
from trufflehog3.core import load_rules
from trufflehog3.models import File
from trufflehog3.search import search

rules = load_rules(sys.argv[2])
with open(sys.argv[1], encoding="utf-8") as corpus:
    files = json.load(corpus)
started = time.perf_counter()
for path, text in files.items():
    search(File(path=path, content=text), rules, ignore_nosecret=True)
print(time.perf_counter() - started)
"""
"""The floor, run by the scanner virtualenv's Python: ``FLOOR CORPUS.json RULES.yml`` prints the
seconds trufflehog3's search took over the corpus (path -> text)."""

# fmt: off
WORDS = (
    "request", "response", "client", "server", "config", "settings", "value", "result", "items",
    "index", "count", "total", "user", "account", "session", "token", "cache", "retry", "timeout",
    "payload", "buffer", "stream", "record", "batch", "worker", "queue", "job", "status", "error",
    "message", "handler", "parser", "render", "template", "path", "file", "name", "data", "key",
    "field", "limit",
)
# fmt: on
"""Identifiers of the generated code are made of these."""


def _name(rng: random.Random) -> str:
    return "_".join(rng.sample(WORDS, rng.randint(1, 3)))


def _code_line(rng: random.Random) -> str:
    """One line of the kinds a diff adds: code, comments, imports, configuration, digests."""
    a, b, c = _name(rng), _name(rng), _name(rng)
    kind = rng.randrange(12)
    if kind == 0:
        return f"def {a}({b}: str, {c}: int = {rng.randint(0, 99)}) -> dict[str, object]:"
    if kind == 1:
        return f"    # {' '.join(rng.choices(WORDS, k=rng.randint(4, 12)))}"
    if kind == 2:
        return f"import {a.split('_')[0]}" if rng.random() < 0.5 else f"from {a} import {b}, {c}"
    if kind == 3:
        return f'const {a} = require("./{b}/{c}");'
    if kind == 4:
        return f"  {a}: {rng.choice(['true', 'false', str(rng.randint(1, 5000)), repr(b)])}"
    if kind == 5:
        return f'    url = "https://api.example.com/v{rng.randint(1, 3)}/{b}/{c}?limit={rng.randint(1, 500)}"'
    if kind == 6:
        return f'    checksum = "{rng.randbytes(32).hex()}"'
    if kind == 7:
        return ""
    if kind == 8:
        return f"        if {a} is None or len({b}) > {rng.randint(1, 64)}:"
    if kind == 9:
        return f'            raise ValueError(f"{{{a}!r}}: {" ".join(rng.choices(WORDS, k=4))}")'
    if kind == 10:
        return f"    return {{{a!r}: {b}, {c!r}: self.{a}.get({b!r}, {rng.randint(0, 9)})}}"
    return (
        f"        {a} = self.{b}.{c}({_name(rng)}, retries={rng.randint(0, 5)}, timeout={rng.random():.2f})"
    )


def _fake_secret(rng: random.Random) -> str:
    """A credential-shaped value made at run time, so this file holds none."""
    alnum = string.ascii_letters + string.digits
    if rng.random() < 0.5:
        return "gh" + "p_" + "".join(rng.choices(alnum, k=36))
    return "AK" + "IA" + "".join(rng.choices(string.ascii_uppercase + "234567", k=16))


def corpus(size: int, seed: int = 5, planted: int = 8) -> tuple[Added, set[tuple[str, int]]]:
    """About ``size`` bytes of added lines in files of 2-30 KB, and where the fake secrets are."""
    rng = random.Random(seed)
    added: Added = {}
    total = 0
    while total < size:
        path = f"src/{_name(rng)}_{len(added)}.py"
        target = rng.randint(2_000, 30_000)
        lines: list[tuple[int, str]] = []
        chars = 0
        while chars < target:
            text = _code_line(rng)
            lines.append((len(lines) + 1, text))
            chars += len(text) + 1
        added[path] = lines
        total += chars
    secrets: set[tuple[str, int]] = set()
    for path in rng.sample(sorted(added), planted):
        number, _ = rng.choice(added[path])
        added[path][number - 1] = (number, f'    api_token = "{_fake_secret(rng)}"')
        secrets.add((path, number))
    return added, secrets


def megabytes(added: Added) -> float:
    return sum(len(text.encode()) + 1 for lines in added.values() for _, text in lines) / 1e6


def _check_found(findings: list[SecretFinding], secrets: set[tuple[str, int]]) -> None:
    """A scan that misses a planted secret measured something other than a working scan."""
    missed = secrets - {(finding.path, finding.line) for finding in blocking(findings)}
    if missed:
        raise RuntimeError(f"the scan missed planted secrets at {sorted(missed)}")


def _floor_seconds(interpreter: str, corpus_file: Path, rules: Path) -> float:
    done = subprocess.run(
        [interpreter, "-I", "-c", FLOOR, str(corpus_file), str(rules)],
        env=scanner_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout)


def _command_scan(command: Path, added: Added, rules: Path) -> None:
    """One scan as it ran before the process was kept: the trufflehog3 command over a fresh tree."""
    with tempfile.TemporaryDirectory(prefix="cw-bench-scan-") as tmp:
        root = Path(tmp)
        (root / "tree").mkdir()
        for index, lines in enumerate(added.values()):
            (root / "tree" / f"{index:06d}.txt").write_text("".join(text + "\n" for _, text in lines))
        (root / "config.yml").write_text("{}\n")
        done = subprocess.run(
            [
                str(command),
                *("--no-history", "--config", str(root / "config.yml"), "--rules", str(rules)),
                *(
                    "--format",
                    "JSON",
                    "--ignore-nosecret",
                    "--processes",
                    "1",
                    "--verbose",
                    str(root / "tree"),
                ),
            ],
            cwd=root,
            env=scanner_env(),
            capture_output=True,
            check=False,
        )
    if done.returncode not in (0, 2):
        raise RuntimeError(f"trufflehog3 failed with exit status {done.returncode}")


def _write_corpus(added: Added, where: Path) -> Path:
    """The files as the floor reads them: path -> text, in a JSON file under ``where``."""
    corpus_file = where / "corpus.json"
    texts = {path: "\n".join(text for _, text in lines) for path, lines in added.items()}
    corpus_file.write_text(json.dumps(texts), encoding="utf-8")
    return corpus_file


def fixed_cost(repeat: int) -> Figure:
    """Milliseconds a 200-line diff costs with the process running, against the trufflehog3 command."""
    rng = random.Random(11)
    added = {"app/service.py": [(number, _code_line(rng)) for number in range(1, 201)]}
    added["app/service.py"][99] = (100, f'    api_token = "{_fake_secret(rng)}"')
    cold = []
    for _ in range(3):
        scanner = SecretScanner(timeout=SCAN_TIMEOUT)
        cold.append(timed(lambda scanner=scanner: scanner.scan(added)) * 1000)
        scanner.close()
    scanner = SecretScanner(timeout=SCAN_TIMEOUT)
    _check_found(scanner.scan(added), {("app/service.py", 100)})  # starts the process: now warm
    interpreter = scanner.resolve_executable()
    command = Path(interpreter).with_name("trufflehog3")
    with tempfile.TemporaryDirectory(prefix="cw-bench-scan-") as tmp, resources.as_file(RULES) as rules:
        base, ours = interleaved(
            lambda: _command_scan(command, added, rules), lambda: scanner.scan(added), repeat
        )
        corpus_file = _write_corpus(added, Path(tmp))
        search = median([_floor_seconds(interpreter, corpus_file, rules) * 1000 for _ in range(3)])
    scanner.close()
    ours_ms, base_ms = [s * 1000 for s in ours], [s * 1000 for s in base]
    value = median(ours_ms)
    return Figure(
        name="secret scan, fixed cost per job (200-line diff, process running)",
        value=value,
        unit="ms",
        baseline="trufflehog3 command per scan (before)",
        baseline_value=median(base_ms),
        target="< 50 ms",
        met=value < 50,
        spread=spread(ours_ms),
        repeat=repeat,
        note=(
            f"{search:.1f} ms of it is trufflehog3's own search of the 200 lines (in-process); "
            f"the first scan of a new scanner, which starts its process: {median(cold):.0f} ms"
        ),
    )


def throughput(size: int, repeat: int) -> Figure:
    """MB/s of added text, codeworker's warm scan against trufflehog3's search in-process."""
    added, secrets = corpus(size)
    mb = megabytes(added)
    scanner = SecretScanner(timeout=SCAN_TIMEOUT)
    _check_found(scanner.scan(added), secrets)  # also starts the process
    interpreter = scanner.resolve_executable()
    base: list[float] = []
    ours: list[float] = []
    with tempfile.TemporaryDirectory(prefix="cw-bench-scan-") as tmp, resources.as_file(RULES) as rules:
        corpus_file = _write_corpus(added, Path(tmp))
        for _ in range(repeat):  # interleaved, so drifting load hits both alike
            base.append(mb / _floor_seconds(interpreter, corpus_file, rules))
            ours.append(mb / timed(lambda: scanner.scan(added)))
    scanner.close()
    value, floor = median(ours), median(base)
    return Figure(
        name=f"secret scan, throughput ({mb:.1f} MB of added code in {len(added)} files)",
        value=value,
        unit="MB/s",
        baseline="trufflehog3 search in-process (floor)",
        baseline_value=floor,
        target=">= 0.8x",
        met=value >= 0.8 * floor,
        spread=spread(ours),
        repeat=repeat,
        note=f"{len(secrets)} planted fake credentials, all found",
    )


def figures(quick: bool) -> list[Figure]:
    return [
        fixed_cost(repeat=5 if quick else 20),
        throughput(size=1_000_000 if quick else 3_000_000, repeat=3 if quick else 5),
    ]


if __name__ == "__main__":
    report.main(figures, __doc__)
