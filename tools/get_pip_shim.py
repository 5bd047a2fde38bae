"""Stand-in for the get-pip.py that ansible-test downloads to seed its sanity venvs.

ansible-test runs this file as __main__ with pip-style arguments ("pip==24.2", "--no-setuptools", ...). We
cannot reach the host it downloads from, so: seed pip with the interpreter's own ensurepip, then let that pip
install the requested packages from the package index this machine is configured for.
"""

import ensurepip
import os
import subprocess
import sys

ensurepip.bootstrap(upgrade=True)
# ensurepip points PIP_CONFIG_FILE at /dev/null in this process; the install below needs the machine's pip
# configuration (index, CA bundle) back.
env = {k: v for k, v in os.environ.items() if k != "PIP_CONFIG_FILE"}
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *args], env=env)
