"""The answer parser: every rule in parse_label's docstring, one case each."""
import pytest

from projection_probe.evaluate.parse import parse_label
from projection_probe.io import InputError

CLASSES = ["banded", "Bacterial spot", "shirt", "T-shirt", "dotted", "polka-dotted", "cat", "dog"]


@pytest.mark.parametrize("raw, expected", [
    ("banded", "banded"),                       # exact
    ("BANDED", "banded"),                       # case-insensitive exact
    ("bacterial spot", "Bacterial spot"),       # returned in the pinned spelling
    ("Bacterial  spot", "Bacterial spot"),      # whitespace runs collapse
    ('"banded"', "banded"),                     # surrounding double quotes
    ("'banded'", "banded"),                     # surrounding single quotes
    ("\u201cbanded\u201d", "banded"),           # typographic quotes
    ("banded.", "banded"),                      # trailing period
    ('"banded".', "banded"),                    # period outside the quotes
    ("'banded.'", "banded"),                    # period inside the quotes
    ("banded</s>", "banded"),                   # EOS string
    ("  banded  </s>", "banded"),
    ("banded<|im_end|>more", "banded"),         # text after an EOS is ignored
    ("banded\nThe image shows dotted texture", "banded"),   # first line only
    ("\nbanded\ncat", "banded"),                # leading blank line dropped before taking line one
    ("T-shirt", "T-shirt"),
    ("t-shirt", "T-shirt"),
    ("It is a t-shirt", "T-shirt"),             # substring: shirt gives way to the longer t-shirt
    ("a plain shirt", "shirt"),                 # substring: only shirt occurs
    ("The label is polka-dotted.", "polka-dotted"),
    ("the texture is banded", "banded"),        # unique substring
    ("cat or dog", None),                       # two unrelated classes: ambiguous
    ("banded and polka-dotted", None),          # two maximal classes: ambiguous
    ("a giraffe", None),                        # no class
    ("", None),                                 # empty
    ("   ", None),
    ("</s>", None),
    ('""', None),
    ("\n\ncat", "cat"),
    (None, None),
])
def test_parse_label(raw, expected):
    assert parse_label(raw, CLASSES) == expected


def test_over_long_output_uses_first_line_only():
    tail = " ".join(["dog"] * 5000)
    assert parse_label("cat\n" + tail, CLASSES) == "cat"
    # and a long single line is matched like a short one
    assert parse_label("This image, after careful inspection, " * 200 + "shows a cat", CLASSES) == "cat"


def test_custom_eos_strings():
    assert parse_label("cat<eot>dog", CLASSES, eos_strings=("<eot>",)) == "cat"
    assert parse_label("cat<eot>dog", CLASSES, eos_strings=()) is None  # both classes occur


def test_classes_equal_up_to_case_are_rejected():
    with pytest.raises(InputError, match="differ only in case"):
        parse_label("cat", ["cat", "Cat"])


@pytest.mark.parametrize("raw, expected", [
    ("Banded", "Banded"),                  # exactly a class string
    ("  Banded </s> more", "Banded"),      # cut at EOS, outer whitespace stripped
    ("banded", None),                      # case differs: the parser would accept it, exact does not
    ('"Banded"', None),                    # quoted
    ("Banded.", None),                     # trailing period
    ("Banded\nthat is all", None),         # no first-line rule: the whole answer counts
    ("The texture is Banded", None),       # substring
    ("", None),
    (None, None),
])
def test_parse_exact_is_no_parser(raw, expected):
    from projection_probe.evaluate.parse import parse_exact, read_answer

    classes = ["Banded", "Dotted"]
    assert parse_exact(raw, classes) == expected
    assert read_answer(raw, classes, "exact") == expected


def test_read_answer_dispatch_and_unknown_parser():
    from projection_probe.evaluate import commands
    from projection_probe.evaluate.parse import PARSERS, read_answer

    assert commands.PARSERS == PARSERS  # the CLI's light copy stays in sync
    assert read_answer('"banded".', ["Banded", "Dotted"]) == "Banded"  # default: the parser
    with pytest.raises(InputError, match="classify.parser.*'fuzzy'"):
        read_answer("Banded", ["Banded"], "fuzzy")
