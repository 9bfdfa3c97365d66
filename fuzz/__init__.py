"""Coverage-guided fuzz targets (atheris) for the gateway's parsers of untrusted input. See fuzz/run.py."""
