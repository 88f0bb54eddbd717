import sys

from robustfeat.cli import main

sys.exit(main())
