"""Test setup: use every core and the tuned allocator before Paddle is first imported."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from senet.runtime import setup_cpu  # noqa: E402

setup_cpu(0)
