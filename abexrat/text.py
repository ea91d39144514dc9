"""A report's text: its title and summary as one string, and the parts a recipe takes from it
(the title, the narrative's first sentence)."""

from __future__ import annotations

import re

_SPACE = re.compile(r"\s+")


# A report's title and summary are one text with the title on its first line: the only line
# break a text can hold (whitespace inside each part is collapsed), so the encoders can weigh the
# title on its own (``encoder.title_weight``) while every other stage sees a single string.
TITLE_SEP = "\n"


def compose_text(title: str | None, summary: str | None) -> str:
    """Title and summary as one report: whitespace collapsed, empty parts dropped, the title
    (when both are present) on the first line."""
    parts = [_SPACE.sub(" ", p).strip() for p in (title, summary) if p]
    return TITLE_SEP.join(p for p in parts if p)


def split_title(text: str) -> tuple[str, str]:
    """(title, rest) of a composed text; ("", text) when it has no title line."""
    title, sep, rest = text.partition(TITLE_SEP)
    return (title, rest) if sep else ("", text)


# A sentence ends at . ! or ? after a lower-case letter, a digit or a bracket, before a capital:
# "a.m. on" and "No. 2" do not end one, "...the ladder. Employee #1 fell" does.
SENTENCE_END = re.compile(r"(?<=[a-z0-9)][.!?])\s+(?=[A-Z])")


def first_sentence(text: str) -> str:
    """The first sentence of a report's narrative, without its title: a short one-line report."""
    narrative = " ".join(split_title(text)[1].split())
    return SENTENCE_END.split(narrative, maxsplit=1)[0]
