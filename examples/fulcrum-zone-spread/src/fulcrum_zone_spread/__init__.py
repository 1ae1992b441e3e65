"""ZoneSpread: a Fulcrum placement-policy plugin."""
