"""Placement-policy plugins that break on purpose."""
