"""Fixtures: see lifeline.kit.testing."""
