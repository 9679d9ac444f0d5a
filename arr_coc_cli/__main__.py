"""``python -m arr_coc_cli``: the same as the ``arr-coc`` command."""

import sys

from arr_coc_cli.main import main

sys.exit(main())
