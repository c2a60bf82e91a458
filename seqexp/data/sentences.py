"""The unit every reader produces and every later stage consumes."""

from __future__ import annotations

from dataclasses import dataclass
from seqexp.errors import DataFormatError  # noqa: F401  (defined with every user error)


@dataclass(frozen=True, slots=True)
class Sentence:
    """One labelled sentence: words and their tags, one tag per word.

    ``origin`` is ``"path:line"`` of the sentence's first token, so that any
    later complaint about the sentence can point at the file.
    """

    words: tuple[str, ...]
    tags: tuple[str, ...]
    origin: str = ""

    def __post_init__(self) -> None:
        if len(self.words) != len(self.tags):
            raise DataFormatError(
                f"{self.origin or '<memory>'}: {len(self.words)} words but {len(self.tags)} tags"
            )

    def __len__(self) -> int:
        return len(self.words)
