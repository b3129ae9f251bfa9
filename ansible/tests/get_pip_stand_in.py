"""A stand-in for pip's get-pip.py, the script ansible-test bootstraps pip with.

ansible-test downloads get-pip.py from a host of its own, which machines that reach only the
package registries cannot; it then runs the script in an empty venv with pip's install options
and the packages it wants (pip, setuptools, wheel). This does the same from what Python and
PyPI provide: ensurepip's bundled pip, then `pip install --upgrade` with those arguments.
ansible/tests/ansible-test puts it where ansible-test looks for its cached copy.
"""

import ensurepip
import subprocess
import sys

# get-pip.py's own options; pip install does not know them (and installs neither package
# unless it is named).
OWN_OPTIONS = ("--no-setuptools", "--no-wheel")

ensurepip.bootstrap()
args = [a for a in sys.argv[1:] if a not in OWN_OPTIONS]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--upgrade"] + args))
