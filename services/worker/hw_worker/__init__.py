"""Headwater worker service."""
