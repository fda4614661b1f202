"""Source-checkout shim for :mod:`stacktools.cli`.

The command line lives in the top-level ``cli/`` folder, which installation maps to
``stacktools.cli``. When Python imports ``stacktools`` straight from a checkout (for
example ``python -m pytest`` run in the repository), this file points the package at
that folder instead. It is never installed.
"""

import os

__path__ = [os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "cli")]
