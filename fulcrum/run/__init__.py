"""The processes Fulcrum deploys: the extender (``fulcrum serve``), the rebuild controller
(``fulcrum rebuild``) and the admission webhook (``fulcrum webhook``), with their credentials and
logging.
"""
