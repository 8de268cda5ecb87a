"""The exception hierarchy, and which task status each exception means.

    DifyRunnerError
    ├── ExecutorException          the executor itself cannot run (bad manifest, no cases)
    ├── TaskExecutionException     a case failed: FAILED, retried unless ``retryable`` is False
    ├── TaskTimeoutException       a case outlived timeout_per_task: TIMEOUT, retried
    └── TaskCancelledException     the run was cancelled while the case ran: CANCELLED, not retried

Any other exception raised while running a case means ERROR and is retried.
"""

from __future__ import annotations


class DifyRunnerError(Exception):
    """Base of every error dify-runner raises on purpose."""


class ExecutorException(DifyRunnerError):
    """The executor cannot run the given manifest."""


class TaskExecutionException(DifyRunnerError):
    """A case ran and failed (business failure): status FAILED.

    ``retryable=False`` marks failures that will not heal on retry (a rejected API key,
    an invalid parameter): the case ends FAILED at once.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class TaskTimeoutException(DifyRunnerError):
    """A case did not finish within its deadline: status TIMEOUT."""


class TaskCancelledException(DifyRunnerError):
    """The run was cancelled during the attempt (e.g. a streaming run was stopped): CANCELLED."""
