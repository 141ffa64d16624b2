"""Helpers shared by the test tiers (``test/unit``, ``test/integration``, ``test/ros``).

``test/`` is on ``sys.path`` (``pythonpath`` in the pytest config), so test files import these as
``support.<module>``; ``test/conftest.py`` registers the fixtures of :mod:`support.fixtures`.
"""
from __future__ import annotations

from pathlib import Path

#: the repository root (the folder holding ``pae_ros/`` and ``setup.py``)
REPO = Path(__file__).resolve().parents[2]
