"""Language profiles: how a repository is set up, how its tests run and report per test, and
which of its files are tests, chosen by what the repository holds (:func:`choose_profile`).

===========  ==============================================  ========================================
profile      chosen when                                     module
===========  ==============================================  ========================================
javascript   a ``package.json`` with a ``test`` script, or   :mod:`codeworker.profiles.javascript`
             one without and no Python project files
python       everything else (today's behaviour)             :mod:`codeworker.profiles.python`
===========  ==============================================  ========================================

``junit:`` in ``.codeworker.yml`` keeps the profile's setup and test command but reads per-test
results from the JUnit files it names (:mod:`codeworker.profiles.junit_files`).
"""

from __future__ import annotations

from pathlib import Path

from codeworker.profiles.base import Profile, ProfileError
from codeworker.profiles.javascript import javascript_profile, read_package
from codeworker.profiles.junit_files import JUnitFiles
from codeworker.profiles.python import is_python, python_profile
from codeworker.sandbox.repo_config import RepoConfig

__all__ = ["Profile", "ProfileError", "choose_profile"]


def choose_profile(checkout: Path, config: RepoConfig, requested_test_command: str | None = None) -> Profile:
    """The checkout's profile. A ``package.json`` makes it JavaScript unless it has no test script
    and the repository is a Python project (a Python service with a package.json for its tooling).
    A JavaScript repository without a test script needs ``requested_test_command`` or
    ``test_command`` in ``.codeworker.yml``; else :class:`ProfileError` says what to add."""
    explicit = bool(requested_test_command or config.test_command)
    package = read_package(checkout)
    if package is not None and (package.test_script or not is_python(checkout)):
        profile = javascript_profile(checkout, config, package, explicit)
    else:
        profile = python_profile(checkout, config)
    if config.junit:
        profile = profile.with_reporting(JUnitFiles(config.junit))
    return profile
