"""The worker side: Celery app, tasks, execution of one attempt, Dify client, ResultConverter.

Nothing here imports ``dify_runner.producer``.
"""

from .converter import ResultConverter
from .exceptions import (
    DifyRunnerError,
    ExecutorException,
    TaskExecutionException,
    TaskTimeoutException,
)
from .models import (
    RunExecutionResult,
    RunStatistics,
    TaskResult,
    TaskStatus,
    TestResult,
    TestStatus,
)

__all__ = [
    "DifyRunnerError",
    "ExecutorException",
    "ResultConverter",
    "RunExecutionResult",
    "RunStatistics",
    "TaskExecutionException",
    "TaskResult",
    "TaskStatus",
    "TaskTimeoutException",
    "TestResult",
    "TestStatus",
]
