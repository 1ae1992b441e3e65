"""TenantAffinity: a Fulcrum placement-policy plugin."""
