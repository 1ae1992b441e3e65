"""The pure placement core: cluster snapshots as numpy arrays, trace replay, the optimiser."""
