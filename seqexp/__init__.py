"""seqexp: compare fine-tuning strategies for sequence labeling, one Hydra sweep at a time."""

__version__ = "0.1.0"
