"""``freeze=last``: only the tagging head trains (feature-based use of a frozen encoder).

The whole encoder is frozen and runs in eval mode, so its word states never change: they are
computed once per dataset and served from the feature cache (``seqexp/models/feature_cache.py``).
"""

from __future__ import annotations

from seqexp.strategies.base import Strategy


class Last(Strategy):
    """Head only: the base behaviour, named."""
