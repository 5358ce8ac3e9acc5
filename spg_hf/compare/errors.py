"""What stops a comparison (CompareError) and what fails one run only (RunFailed)."""

from __future__ import annotations


class CompareError(Exception):
    """Input that cannot give a comparison (a command that writes no metrics, an unknown metric, an arm whose
    flags the command rejects, rows of another experiment in the results folder): everything stops."""


class RunFailed(RuntimeError):
    """One run failed; it is reported with its log's last lines and the other runs go on."""
