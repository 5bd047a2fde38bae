"""``python -m mlflow_ha_client``: the command line (cli.py)."""

import sys

from mlflow_ha_client.cli import main

sys.exit(main())
