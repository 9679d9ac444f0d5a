import sys

from arr_coc.cli import main

sys.exit(main())
