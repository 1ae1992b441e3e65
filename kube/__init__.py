"""What the extender and the rebuild controller share: Fulcrum's Kubernetes API.

The ``fulcrum.io/*`` annotations parsed once into a typed view (``api``), the one rule for
which pods local rebuild takes (``eligibility``), the custom resources (Reservation in ``api``,
IPPool in ``ippool``), resource quantities as the placement core counts them (``resources``),
the list-and-watch ``informer`` and ``plugins`` loading (rebuild ``hooks`` are plugins).
Pure functions over JSON-decoded objects, except the informer's thread; ``extender`` and
``rebuild`` import this package and never each other.
"""
