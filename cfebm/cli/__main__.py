"""``python -m cfebm.cli``: the same as the ``cfebm`` command."""

import sys

from cfebm.cli import main

sys.exit(main())
