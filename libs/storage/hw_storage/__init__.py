"""Headwater's file contents: chunks and layered file indexes in an object store.

Shared by the CLI (it uploads and downloads bytes; they never travel over the bus) and the fs service
(it composes, copies and lists files). Nothing here talks to NATS.
"""
