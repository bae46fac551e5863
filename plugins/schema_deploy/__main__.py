import sys

from schema_deploy.cli import main

sys.exit(main())
