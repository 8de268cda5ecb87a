"""The producer side: CLI, plan expansion, submission, waiting and reports."""

from .executors import CancellationToken, ConcurrentExecutor, ExecutorService, StubExecutor

__all__ = ["CancellationToken", "ConcurrentExecutor", "ExecutorService", "StubExecutor"]
