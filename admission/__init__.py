"""Admission webhooks: pods that use Fulcrum go to fulcrum-scheduler; bad fulcrum.io
annotations are refused at kubectl apply."""
