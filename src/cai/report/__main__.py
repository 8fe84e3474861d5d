"""python -m cai.report RUN_DIR [--output FILE]: the same page as `cai report RUN_DIR`, written anywhere."""

import sys

from cai.errors import handle
from cai.report import main

try:
    sys.exit(main())
except Exception as e:  # bad input: one line and exit 2 (cai.errors), as from `cai report`
    sys.exit(handle(e))
