"""Headwater file store service: repos, branches, commits and files."""
