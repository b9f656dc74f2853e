"""Running a repository's commands: bubblewrap confinement, setup's isolated network, the setup
cache, the repository's own configuration, and the executor's confined view of its checkout."""
