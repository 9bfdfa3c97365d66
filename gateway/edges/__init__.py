"""The I/O edges, one kind of connection each: S3, the registry's HTTP/1.1 pool, the forwarder."""
