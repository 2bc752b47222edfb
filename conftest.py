"""
pytest runs the trial TestCases the way trial does: from inside
``_trial_temp``, so files a test makes with ``mktemp()`` stay out of the
checkout, while the checkout itself stays importable.
"""

import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)


def pytest_configure(config):
    temp = os.path.join(ROOT, "_trial_temp")
    os.makedirs(temp, exist_ok=True)
    os.chdir(temp)
