"""``stacktools consolidate`` and ``stacktools verify``."""

from __future__ import annotations
