"""fulcrum node: the node agent and its plugins (NRI, device plugin, CRI image service, checks)."""
