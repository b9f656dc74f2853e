"""The secret scan of what a job adds: trufflehog3 as a subprocess and the rule pack it runs."""
