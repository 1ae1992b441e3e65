"""An example Fulcrum placement-policy plugin."""
