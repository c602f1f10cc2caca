"""`python -m mdlm.decode` runs `mdlm-generate`."""

import sys

from mdlm.decode.cli import main

sys.exit(main())
