"""Placement policies: one module per policy, each a pure function of (snapshot, pod)."""
