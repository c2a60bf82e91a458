"""Models: encoders (hub, local, PyPI-shipped, tiny), tagging heads and the Tagger."""

# How a word's vector is made from its subwords' states (top-level key `alignment`; seqexp.models.tagger.pool_words).
ALIGNMENTS = ("first", "last", "mean")
