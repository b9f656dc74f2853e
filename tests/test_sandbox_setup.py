"""The sandbox's setup command, for real: bubblewrap around it in real worktrees of a real git server.

Setup has the network (here the host's, to reach a server on loopback) and a writable cache; later
commands have neither. Its cache is reused until the dependency files change; a failed setup
raises and publishes nothing; a repository without a setup command sets nothing up.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
import yaml

from codeworker.config import Settings
from codeworker.coordination.keys import repo_id
from codeworker.sandbox.checkout import Checkout
from codeworker.sandbox.setup_cache import SetupFailed
from tests.support import sandbox_fixtures
from tests.support.checkouts import FILES, Checkouts, needs_bwrap
from tests.support.sandbox_fixtures import python_c

pytestmark = needs_bwrap

# The shared fixtures, bound to this module's names: pytest finds them here for these tests only.
env = sandbox_fixtures.env
checkout = sandbox_fixtures.checkout

# -- setup --------------------------------------------------------------------------------------


@pytest.fixture()
def http_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"payload-from-network"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dep"
    server.shutdown()
    server.server_close()


FETCH = "import os, urllib.request; print(urllib.request.urlopen('{url}', timeout=5).read().decode())"


def _setup_repo(env: Checkouts, url: str, requirements: str = "dep==1\n") -> str:
    fetch = FETCH.format(url=url)
    setup = f'python -c "{fetch}" > $CODEWORKER_CACHE/payload && echo run >> $CODEWORKER_CACHE/count'
    config = yaml.safe_dump({"setup_command": setup})
    return env.repo({**FILES, ".codeworker.yml": config, "requirements.txt": requirements})


def _host_network(env: Checkouts) -> Settings:
    """Settings whose setup shares the host's network. The setup tests that download something use
    it: the only server a test may reach is on loopback, which isolated setup cannot reach."""
    return env.settings.model_copy(update={"setup_network": "host"})


def test_setup_has_network_later_commands_do_not(env: Checkouts, http_server: str) -> None:
    worktree = env.worktree(_setup_repo(env, http_server))
    box = env.checkout(worktree, settings=_host_network(env))
    try:
        result = box.setup()
        assert result is not None and result.ok, result and result.output

        later = box.run(python_c(FETCH.format(url=http_server)))
        cached = box.run('cat "$CODEWORKER_CACHE/payload"; echo x >> "$CODEWORKER_CACHE/count"')

        assert later.exit_code != 0 and "payload-from-network" not in later.output
        assert "payload-from-network" in cached.output
        assert "Read-only file system" in cached.output  # the cache is read-only after setup
    finally:
        box.close()
        worktree.remove()


def test_setup_is_reused_until_dependency_files_change(env: Checkouts, http_server: str) -> None:
    url = _setup_repo(env, http_server)
    first, second = env.worktree(url), env.worktree(url)
    box1, box2 = (
        env.checkout(first, settings=_host_network(env)),
        env.checkout(second, settings=_host_network(env)),
    )
    try:
        assert box1.setup() is not None
        assert box2.setup() is None  # reused
        count = box2.run('cat "$CODEWORKER_CACHE/count"')
        assert count.output.splitlines() == ["run"]

        name = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
        env.git_server.commit_on(env.owner, name, "main", {"requirements.txt": "dep==2\n"}, "bump")
        third = env.worktree(url)
        box3 = env.checkout(third, settings=_host_network(env))
        try:
            assert box3.setup() is not None  # a new key: setup runs again
            assert box3.run('cat "$CODEWORKER_CACHE/count"').output.splitlines() == ["run"]
        finally:
            box3.close()
            third.remove()
    finally:
        for box, wt in ((box1, first), (box2, second)):
            box.close()
            wt.remove()


def test_failed_setup_raises_and_publishes_nothing(env: Checkouts) -> None:
    config = "setup_command: 'echo partial > $CODEWORKER_CACHE/x; echo boom-output; exit 3'\n"
    worktree = env.worktree(env.repo({**FILES, ".codeworker.yml": config}))
    box = env.checkout(worktree)
    try:
        with pytest.raises(SetupFailed, match=r"exited 3:\nboom-output"):
            box.setup()
        repo_cache = env.settings.cache_root / repo_id(worktree.url)
        assert [p.name for p in repo_cache.iterdir() if not p.name.endswith(".lock")] == []
    finally:
        box.close()
        worktree.remove()


def test_nothing_to_set_up(checkout: Checkout) -> None:
    assert checkout.setup() is None


# -- JavaScript: node_modules in the cache, shown in the checkout -------------------------------

INSTALL = (
    "mkdir -p node_modules/greet && echo \"exports.hi = () => 'hi';\" > node_modules/greet/index.js"
    " && echo installed"
)
"""What ``npm ci`` does to a checkout, without a registry: packages written under ./node_modules."""

JS_FILES = {
    "package.json": '{"name": "app", "scripts": {"test": "node --test"}}',
    ".codeworker.yml": yaml.safe_dump({"setup_command": INSTALL}),
    "test/greet.test.js": "const test = require('node:test');\ntest('hi', () => require('greet').hi());\n",
}


def test_node_modules_installed_by_setup_live_in_the_cache_and_show_in_the_checkout(env: Checkouts):
    url = env.repo(JS_FILES)
    # Node reserves more address space at start than these tests' 512 MiB: the default limit.
    settings = env.settings.model_copy(update={"setup_network": "none", "sandbox_memory_mb": 4096})
    first, second = env.worktree(url), env.worktree(url)
    boxes = [env.checkout(first, settings=settings), env.checkout(second, settings=settings)]
    try:
        result = boxes[0].setup()
        assert result is not None and result.ok, result and result.output
        assert boxes[1].setup() is None  # the next job reuses the cache entry

        entry = next((settings.cache_root / repo_id(url)).glob("[0-9a-f]*[0-9a-f]"))
        assert (entry / "node_modules" / "greet" / "index.js").is_file()
        for box in boxes:
            ran = box.run("node -e \"console.log(require('greet').hi())\" && touch node_modules/x")
            assert ran.output.startswith("hi\n") and "Read-only file system" in ran.output, ran.output
            assert box.changed_files() == []  # a mount: nothing of it is in the checkout's files
            assert not any((box.root / "node_modules").iterdir())
            # Tools' caches inside node_modules (Vitest's results) are writable, and each command's own.
            cached = box.run("touch node_modules/.vite/r.json node_modules/.cache/x && ls node_modules/.vite")
            assert cached.ok and cached.output == "r.json\n", cached.output
            assert box.run("ls -A node_modules/.vite").output == ""
        assert not any((entry / "node_modules" / ".vite").iterdir())
    finally:
        for box, worktree in zip(boxes, (first, second), strict=True):
            box.close()
            worktree.remove()
