import sys

from schema_deploy.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
