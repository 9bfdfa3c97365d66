"""The client's one error hierarchy; every error knows its exit code.

ClientError                  1  network or server failure
├── UsageError               2  bad arguments or configuration
├── IntegrityError           3  a hash or size did not match
├── TransportError           1  the server could not be reached (retryable, resumable)
├── ObjectStoreError         1  the object store answered a presigned request with an error
└── ApiError                 1  the library API answered with an error envelope or a bad status
    ├── NotFound             5  404 where the protocol gives it a meaning (image or tag missing)
    └── AuthRefused          4  401/403: missing, wrong or insufficient token
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "EXIT_AUTH",
    "EXIT_FAILURE",
    "EXIT_INTEGRITY",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "ApiError",
    "AuthRefused",
    "ClientError",
    "IntegrityError",
    "NotFound",
    "ObjectStoreError",
    "TransportError",
    "UsageError",
    "api_error",
]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTEGRITY: Final = 3
EXIT_AUTH: Final = 4
EXIT_NOT_FOUND: Final = 5
EXIT_INTERRUPTED: Final = 130


class ClientError(Exception):
    exit_code: int = EXIT_FAILURE
    # A multipart push that fails this way keeps its upload (and state file) for --resume: only network failures
    # that outlast the retries; a server that keeps refusing makes the push give the upload up (abort).
    resumable: bool = False


class UsageError(ClientError):
    exit_code = EXIT_USAGE


class IntegrityError(ClientError):
    exit_code = EXIT_INTEGRITY


class TransportError(ClientError):
    resumable = True


class ObjectStoreError(ClientError):
    def __init__(self, status: int, detail: str = "") -> None:
        super().__init__(f"object store returned an error: {status}" + (f" ({detail})" if detail else ""))
        self.status = status
        self.code = detail  # the S3 error code when the body had one


class ApiError(ClientError):
    def __init__(self, status: int, message: str, *, method: str = "", path: str = "") -> None:
        where = f"{method} {path}: " if method else ""
        super().__init__(f"{where}{message} ({status})")
        self.status = status
        self.message = message


class NotFound(ApiError):
    exit_code = EXIT_NOT_FOUND


class AuthRefused(ApiError):
    exit_code = EXIT_AUTH


def api_error(status: int, message: str, *, method: str = "", path: str = "") -> ApiError:
    """The typed error for a library-API status."""
    if status == 404:
        return NotFound(status, message, method=method, path=path)
    if status in (401, 403):
        return AuthRefused(status, message, method=method, path=path)
    return ApiError(status, message, method=method, path=path)
