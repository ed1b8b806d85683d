import sys

from cvops.cli import main

sys.exit(main())
