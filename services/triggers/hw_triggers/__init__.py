"""Headwater triggers service."""
