"""Headwater scheduler service."""
