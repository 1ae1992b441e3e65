"""A plugin module that cannot be imported."""

raise RuntimeError("fulcrum_broken_policy.broken_at_import fails at import on purpose")
