"""The design card keeps ``tasks/`` and ``executors/`` at the top of the tree; they install as
``codeworker.tasks`` and ``codeworker.executors`` so a backend's own ``tasks`` module never collides."""

from setuptools import find_packages, setup

NAMESPACED = {"codeworker.tasks": "tasks", "codeworker.executors": "executors"}

setup(
    packages=[
        *find_packages(include=["codeworker", "codeworker.*"]),
        *(
            f"{namespace}{package.removeprefix(folder)}"
            for namespace, folder in NAMESPACED.items()
            for package in find_packages(include=[folder, f"{folder}.*"])
        ),
    ],
    package_dir=NAMESPACED,
)
