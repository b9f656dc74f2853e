"""Git through pygit2: shared bare mirrors, one worktree per job, token auth in a header, push
and merge."""
