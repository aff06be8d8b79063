"""Test configuration: the device the suite runs on.

``FUSED_QKV_TEST_DEVICE`` (default ``cpu``): ``cpu`` runs every kernel under Triton's
interpreter; ``cuda`` runs the compiled kernel on the GPU.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py

DEVICE = os.environ.get("FUSED_QKV_TEST_DEVICE", "cpu")
