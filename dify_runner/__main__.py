"""``python -m dify_runner`` is the ``dify-runner`` command."""

import sys

from .producer.cli import main

sys.exit(main())
