"""Local rebuild: bring a changed pod back on its node, with its volumes and its IP."""
