"""Headwater builder service."""
