"""Offline analysis of a KernelSight database: signals, baselines, cause->effect findings,
an HTML report and a read-only agent. Nothing here imports collectors; the heavy
dependencies (numpy, ruptures, plotly, google-genai) are the optional extra ``analysis`` and
are imported by the modules that need them, so ``own`` stays importable without them."""

__all__: list[str] = []
