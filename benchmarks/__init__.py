"""Speed checks of the numpy cores; run each as ``python -m benchmarks.<name>`` from the repository root."""
