"""dify-runner: run large test plans against Dify workflows on a fleet of Celery workers.

The code lives in three packages that mirror the repository layout:

- ``dify_runner.config``: the plan, manifest and settings models (the file boundary);
- ``dify_runner.worker``: the Celery app, the tasks, the Dify client and ResultConverter;
- ``dify_runner.producer``: the CLI, plan expansion, submission, waiting and reports.

``worker`` never imports ``producer``.
"""

__version__ = "0.1.0"
