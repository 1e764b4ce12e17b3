"""`python -m pointrend_core.workbook run ...`: the batch runner (see `workbook.runner`)."""

import sys

from pointrend_core.workbook.runner import main

sys.exit(main())
