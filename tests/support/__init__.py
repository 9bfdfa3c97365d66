"""Test support: real S3 servers, the sregistry fake, the stack, harnesses (demo and bench use it)."""
