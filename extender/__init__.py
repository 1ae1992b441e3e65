"""The kube-scheduler extender: wire types, the cluster cache, the HTTP service."""
