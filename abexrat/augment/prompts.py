"""Versioned prompts of ABEX's two steps: abstraction (report -> abstract) and expansion (abstract -> report).

Every message list is in the OpenAI chat format that both engines take (``[{"role", "content"}]``).
``PROMPT_VERSION`` and a digest of the templates are part of the cache key, so an edited prompt
never reuses rows generated with the old one, even if someone forgets to bump the version.
"""

from __future__ import annotations

import hashlib

PROMPT_VERSION = "abex-v1"

ABSTRACT_SYSTEM = "You are an occupational-safety analyst. You write short, factual abstracts of OSHA accident reports."
ABSTRACT_USER = (
    "Read the accident report below and write an abstract of at most {max_words} words, as one paragraph. "
    "Keep only what decides the event type: what happened, the mechanism of the injury, the object, "
    "equipment or substance involved, and the injury. Leave out names, dates, places and company details. "
    "Write only the abstract.\n\nEvent type: {label}\n\nReport: {text}"
)
EXPAND_SYSTEM = "You are an OSHA investigator who writes accident reports in the style of the OSHA database."
EXPAND_USER = (
    "Below is the abstract of an occupational accident of the event type {label}. Write a new, realistic "
    "accident report of {min_words} to {max_words} words that is consistent with the abstract and keeps its "
    "event type, but tells it in your own words with its own worker, workplace and sequence of events. "
    "Write only the report, as one paragraph.\n\nAbstract: {abstract}"
)

# Sizes the prompts ask for; the pipeline's token limits sit above them.
ABSTRACT_MAX_WORDS = 60
EXPAND_MIN_WORDS, EXPAND_MAX_WORDS = 30, 120


def prompt_digest() -> str:
    """sha256 over the version and every template: the prompts' share of a cache key."""
    parts = (
        PROMPT_VERSION,
        ABSTRACT_SYSTEM,
        ABSTRACT_USER,
        EXPAND_SYSTEM,
        EXPAND_USER,
        str((ABSTRACT_MAX_WORDS, EXPAND_MIN_WORDS, EXPAND_MAX_WORDS)),
    )
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def abstraction_messages(text: str, label: str) -> list[dict[str, str]]:
    """Chat messages asking for the abstract of one report of class ``label``."""
    return [
        {"role": "system", "content": ABSTRACT_SYSTEM},
        {"role": "user", "content": ABSTRACT_USER.format(max_words=ABSTRACT_MAX_WORDS, label=label, text=text)},
    ]


def expansion_messages(abstract: str, label: str, style: str = "chat") -> list[dict[str, str]]:
    """Chat messages asking for one new report from ``abstract``.

    ``style="seq2seq"``: a single user message holding the bare abstract, which is what a
    BART-style expander trained on (abstract -> report) pairs takes as its input.
    """
    if style == "seq2seq":
        return [{"role": "user", "content": abstract}]
    return [
        {"role": "system", "content": EXPAND_SYSTEM},
        {
            "role": "user",
            "content": EXPAND_USER.format(
                label=label, abstract=abstract, min_words=EXPAND_MIN_WORDS, max_words=EXPAND_MAX_WORDS
            ),
        },
    ]
