"""Deliberately broken plugins (test fixtures for containment)."""
