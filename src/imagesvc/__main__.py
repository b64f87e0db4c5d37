import sys

from imagesvc.cli import main

sys.exit(main())
