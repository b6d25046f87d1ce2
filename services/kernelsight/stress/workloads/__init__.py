"""One module per stress workload (see kernelsight.stress.registry)."""
