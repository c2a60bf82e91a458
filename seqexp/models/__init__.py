"""Models: encoders (hub, local, PyPI-shipped, tiny), tagging heads and the Tagger."""
