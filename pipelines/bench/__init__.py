"""The ``zo bench`` measurements: :mod:`.step` (the cost of one step per method and precision) and :mod:`.scale`
(data-parallel replicas and the sweep's per-trial overhead)."""
