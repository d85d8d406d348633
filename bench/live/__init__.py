"""Online data changes against live traffic: ``python -m bench.live`` (see ``__main__``)."""
