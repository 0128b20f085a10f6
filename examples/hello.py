"""Runs in capsa's sandbox: nothing granted but this file."""
import os
import platform
import sys

print(f"hello from Python {platform.python_version()} on {sys.platform}")
try:
    open(os.path.expanduser("~/.ssh/id_rsa")).read()
except OSError as e:
    print(f"and your keys stay yours: {type(e).__name__}")
