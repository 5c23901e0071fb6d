import sys

from hone.cli.main import main

sys.exit(main())
