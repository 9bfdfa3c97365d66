"""``signing-gateway doctor``: checks a configuration against the real services, one line each.

``checks`` runs them (the I/O); ``causes`` explains a failure in plain words and ``answers`` reads what came back
(both pure, tested without a server)."""

from .checks import CLOCK_FAIL_S, CLOCK_WARN_S, Finding, Status, run_doctor

__all__ = ["CLOCK_FAIL_S", "CLOCK_WARN_S", "Finding", "Status", "run_doctor"]
