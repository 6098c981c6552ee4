"""``python -m aidetect score PATH...``: the same as the ``aidetect`` command."""
import sys

from .cli import main

sys.exit(main())
