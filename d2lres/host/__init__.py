"""The machine and process d2lres runs in: which backends are installed, threads, devices,
what an import sets up, MXNet's numpy compatibility."""
