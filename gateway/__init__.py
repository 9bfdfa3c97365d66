"""signing-gateway: presigned S3 multipart uploads for library-API registries."""

__all__ = ["__version__"]

__version__ = "0.1.0"
