"""A "did you mean" for a misspelt name: rules keys, action names, groups, channels."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: object, candidates: Iterable[str]) -> str:
    """ "did you mean 'x'? " naming the candidate closest to ``word`` (difflib), or "" when
    none is close: a guess that is far off misleads more than no guess."""
    if not isinstance(word, str):
        return ""
    found = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return f"did you mean {found[0]!r}? " if found else ""
