"""An example Fulcrum rebuild hook (docs/rebuild.md, "Hooks")."""
