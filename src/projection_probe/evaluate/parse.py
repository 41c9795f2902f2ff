"""Map a model's free-text answer onto one of the dataset's class strings, or mark it invalid.

The authors read LLaVA's answers by eye (interactive CLI, no parser); the reproduction needs a fixed,
documented rule so that every run is scored the same way. It is spelled out in :func:`parse_label`
and, with examples on the paper's class lists, in docs/fidelity.md ("The parser").
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from projection_probe.hyperparams import ClassifyHyperparams
from projection_probe.io import InputError
from projection_probe.names import PARSERS, SEVERAL_CLASSES

DEFAULT_EOS_STRINGS: tuple[str, ...] = ("</s>", "<|im_end|>", "<|endoftext|>")

# PARSERS: "substring" is the documented rule of :func:`parse_label`; "exact" is no parser, as the
# authors, who compared outputs as they were: the answer (cut at EOS, outer whitespace stripped) must
# be a class string, spelled exactly as pinned. SEVERAL_CLASSES: an answer that names several classes
# is "invalid", or reads as the class named "first".
DEFAULT_PARSER, DEFAULT_SEVERAL_CLASSES = ClassifyHyperparams.parser, ClassifyHyperparams.several_classes

# Straight and typographic quotes, plus backticks: models wrap labels in all of them because the
# prompt lists the classes in double quotes.
QUOTE_CHARACTERS = "\"'`\u201c\u201d\u2018\u2019"

_WHITESPACE_RUN = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Lowercase and collapse every whitespace run to one space (applied to outputs and classes alike,
    so that "Tomato  leaf" and "tomato leaf" compare equal)."""
    return _WHITESPACE_RUN.sub(" ", text).strip().lower()


def clean_output(raw: str, eos_strings: Iterable[str] = DEFAULT_EOS_STRINGS) -> str:
    """Steps 1-4 of :func:`parse_label`: the normalised answer text that is matched against the classes."""
    text = raw
    # Everything after an end-of-sequence marker is not part of the answer.
    for eos in eos_strings:
        if eos:
            text = text.split(eos, 1)[0]
    # First line only: a `plain`-trained projector emits `label\n` and may keep going afterwards.
    text = text.lstrip()
    text = text.split("\n", 1)[0].split("\r", 1)[0]
    # Strip whitespace, surrounding quotes and one trailing period, repeatedly, so that `"banded".`
    # and `'banded.'` both reduce to `banded`.
    previous = None
    while text != previous:
        previous = text
        text = text.strip()
        if text.endswith("."):
            text = text[:-1]
        text = text.strip()
        if len(text) >= 2 and text[0] in QUOTE_CHARACTERS and text[-1] in QUOTE_CHARACTERS:
            text = text[1:-1]
        elif text and (text[0] in QUOTE_CHARACTERS or text[-1] in QUOTE_CHARACTERS):
            # An unbalanced quote (e.g. the answer was cut at max_new_tokens) is still decoration.
            text = text.strip(QUOTE_CHARACTERS)
    return normalise_text(text)


def class_lookup(classes: Sequence[str]) -> dict[str, str]:
    """Normalised class string -> pinned spelling; two classes that normalise alike are an error,
    since no answer could then tell them apart."""
    lookup: dict[str, str] = {}
    for c in classes:
        if not isinstance(c, str) or not normalise_text(c):
            raise InputError(f"classes: {c!r} is not a non-empty string; fix the class list in the config")
        key = normalise_text(c)
        if key in lookup:
            raise InputError(f"classes: {lookup[key]!r} and {c!r} differ only in case or spacing; "
                             f"rename one of them in the config")
        lookup[key] = c
    return lookup


def parse_exact(raw: str | None, classes: Sequence[str],
                eos_strings: Iterable[str] = DEFAULT_EOS_STRINGS) -> str | None:
    """The class that ``raw`` is, character for character after cutting at the first EOS string and
    stripping outer whitespace, or None: the authors' reading, with no parser."""
    class_lookup(classes)  # the same checks on the class list as the parser
    if raw is None:
        return None
    text = str(raw)
    for eos in eos_strings:
        if eos:
            text = text.split(eos, 1)[0]
    text = text.strip()
    return text if text in set(classes) else None


def read_answer(raw: str | None, classes: Sequence[str], parser: str = DEFAULT_PARSER,
                eos_strings: Iterable[str] = DEFAULT_EOS_STRINGS, cut_off: bool = False,
                several_classes: str = DEFAULT_SEVERAL_CLASSES) -> str | None:
    """Dispatch to the configured answer reader (config `classify.parser`)."""
    if parser == "substring":
        return parse_label(raw, classes, eos_strings, cut_off=cut_off, several_classes=several_classes)
    if parser == "exact":
        return parse_exact(raw, classes, eos_strings)
    raise InputError(f"classify.parser: unknown value {parser!r}; use one of {PARSERS}")


# A class occurrence right after one of these words is not a naming of that class.
NEGATIONS: tuple[str, ...] = ("not", "no")
_NEGATED = re.compile(r"(?:^|\W)(?:" + "|".join(NEGATIONS) + r")\W*$")


def named_classes(text: str, lookup: dict[str, str]) -> list[str]:
    """The classes that normalised `text` names, in the order of their first naming (step 8 of
    :func:`parse_label`)."""
    found = []  # (start, end, key)
    for key in lookup:
        for match in re.finditer(r"(?<!\w)" + re.escape(key) + r"(?!\w)", text):
            found.append((match.start(), match.end(), key))
    # An occurrence inside a longer one is part of that one ("shirt" in "t-shirt").
    maximal = [(a, b, k) for a, b, k in found
               if not any(a2 <= a and b <= b2 and (b2 - a2) > (b - a) for a2, b2, _ in found)]
    affirmed = sorted((a, k) for a, _, k in maximal if not _NEGATED.search(text[:a]))
    order: list[str] = []
    for _, key in affirmed:
        if key not in order:
            order.append(key)
    return order


def parse_label(raw: str | None, classes: Sequence[str], eos_strings: Iterable[str] = DEFAULT_EOS_STRINGS,
                cut_off: bool = False, several_classes: str = DEFAULT_SEVERAL_CLASSES) -> str | None:
    """Return the class that ``raw`` names, in its pinned spelling from ``classes``, or None (invalid).

    Rules, in order:

    1. Cut the text at the first occurrence of any string in ``eos_strings`` (``</s>``,
       ``<|im_end|>``, ``<|endoftext|>`` by default).
    2. Drop leading whitespace, then keep only the first line. Over-long outputs are treated the same
       way: whatever follows the first line is ignored, however long.
    3. Strip surrounding whitespace, surrounding quotes (straight, typographic or backticks, also an
       unbalanced one) and a trailing period, repeated until nothing changes.
    4. Lowercase and collapse whitespace runs to single spaces (classes are normalised alike).
    5. Empty text -> None.
    6. Exact match: the text equals a normalised class -> that class.
    7. Cut-off answers (``cut_off``: generation stopped at ``max_new_tokens``, before EOS or newline):
       the text is the beginning of exactly one class -> that class; of several -> None.
    8. Naming: a class is named where its normalised string occurs bounded by non-word characters
       (so "unlined" does not name "lined"), not inside a longer named class ("shirt" in "t-shirt"),
       and not right after "not" or "no" ("not striped" does not name "striped").
       Exactly one class named -> that class.
    9. Several classes named -> None, or with ``several_classes="first"`` the one named first.
    10. No class named -> None.
    """
    if several_classes not in SEVERAL_CLASSES:
        raise InputError(f"classify.several_classes: unknown value {several_classes!r}; use one of {SEVERAL_CLASSES}")
    lookup = class_lookup(classes)
    if raw is None:
        return None
    text = clean_output(str(raw), eos_strings)
    if not text:
        return None
    if text in lookup:
        return lookup[text]
    if cut_off:
        continued = [key for key in lookup if key.startswith(text)]
        if continued:
            return lookup[continued[0]] if len(continued) == 1 else None
    named = named_classes(text, lookup)
    if len(named) == 1 or (named and several_classes == "first"):
        return lookup[named[0]]
    return None
