"""Where deploy/ is and how the deploy tests read it: its files, the worker's defaults they must agree
with, the tools that check them, and the queries of its alerts and dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from codeworker.config import Settings
from codeworker.worker.http import WorkerState, create_app

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "codeworker.json"
K8S = DEPLOY / "k8s"

GRACE = Settings.model_fields["shutdown_grace"].default
QUEUE_NAME = Settings.model_fields["queue"].default
PORT = Settings.model_fields["port"].default


def tool(name: str, *fallbacks: Path, install: str = "`make tools` installs it where apt-get can") -> str:
    found = shutil.which(name) or next((str(path) for path in fallbacks if path.is_file()), None)
    if found is None:
        pytest.skip(f"{name} is not installed here ({install})")
    return found


def run(*argv: str, cwd: Path = DEPLOY) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def seconds(duration: str | int) -> float:
    """A compose or systemd duration ("45s", "1m30s", "60") in seconds."""
    if isinstance(duration, int):
        return float(duration)
    parts = re.fullmatch(r"(?:(\d+)h)?\s*(?:(\d+)m(?!s))?\s*(?:(\d+)s?)?", duration.strip())
    assert parts is not None, duration
    hours, minutes, secs = (int(part or 0) for part in parts.groups())
    return hours * 3600 + minutes * 60 + secs


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def served_paths() -> set[str]:
    """The GET routes of the worker's real Flask app."""
    state = WorkerState(
        hostname="h", concurrency=1, health=lambda: None, active_jobs=list, registry=None, started_at=0.0
    )
    app = create_app(Settings(), state)
    return {rule.rule for rule in app.url_map.iter_rules() if "GET" in (rule.methods or ())}


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load(ALERTS)["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h", "$instance": ".*"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and template variable, Grafana's variables filled in."""
    board = dashboard()
    queries = [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in board["templating"]["list"]:
        match = re.fullmatch(r"label_values\((\w+), *\w+\)", variable["query"]["query"])
        assert match, variable["query"]
        queries.append((f"variable {variable['name']}", match.group(1)))
    for name, value in GRAFANA_VARIABLES.items():
        queries = [(where, expr.replace(name, value)) for where, expr in queries]
    return queries
