"""The answer parser: every rule in parse_label's docstring, one case each, and the cases of
docs/fidelity.md on the real DTD, DermNet and PlantDoc class lists of config/paper.yaml."""
from pathlib import Path

import pytest
import yaml

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
    from projection_probe.evaluate.parse import read_answer

    assert read_answer('"banded".', ["Banded", "Dotted"]) == "Banded"  # default: the parser
    with pytest.raises(InputError, match="classify.parser.*'fuzzy'"):
        read_answer("Banded", ["Banded"], "fuzzy")


PAPER_DATASETS = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "paper.yaml").read_text())["datasets"]
DTD = PAPER_DATASETS["dtd"]["classes"]
DERMNET = PAPER_DATASETS["dermnet"]["classes"]
PLANTDOC = PAPER_DATASETS["plantdoc"]["classes"]
ACTINIC = "Actinic Keratosis Basal Cell Carcinoma and other Malignant Lesions"


@pytest.mark.parametrize("raw, classes, cut_off, expected", [
    # word boundaries
    ("unlined", DTD, False, None),
    ("The texture is lined.", DTD, False, "lined"),
    ("dotted", DTD, False, "dotted"),
    ("It is polka-dotted", DTD, False, "polka-dotted"),            # dotted is part of polka-dotted
    ("Rosacea", DERMNET, False, None),                             # a word inside a class names nothing
    # negated namings do not count
    ("The texture is not striped", DTD, False, None),
    ("notably striped", DTD, False, "striped"),                    # "notably" is not "not"
    ("Tomato leaf (not Tomato leaf late blight)", PLANTDOC, False, "Tomato leaf"),
    # containment: the longer class that holds the shorter one is the one named
    ("It looks like Tomato leaf late blight", PLANTDOC, False, "Tomato leaf late blight"),
    ("grape leaf black rot", PLANTDOC, False, "grape leaf black rot"),
    ("Bell pepper leaf spot, I think", PLANTDOC, False, "Bell pepper leaf spot"),
    # two classes named: invalid
    ("banded or striped", DTD, False, None),
    ("Apple leaf and Cherry leaf", PLANTDOC, False, None),
    ("Eczema Photos or Urticaria Hives", DERMNET, False, None),
    # cut off at max_new_tokens: the one class the answer begins
    (" Actinic Keratosis Basal Cell Carcinoma and other Mal", DERMNET, True, ACTINIC),
    (' "Actinic Keratosis Basal', DERMNET, True, ACTINIC),         # an opening quote is decoration
    (" Actinic Keratosis Basal Cell Carcinoma and other Mal", DERMNET, False, None),  # not cut: invalid
    ("Tomato leaf late bl", PLANTDOC, True, "Tomato leaf late blight"),
    ("Tomato leaf", PLANTDOC, True, "Tomato leaf"),                # a whole class wins over a longer one
    ("Tomato le", PLANTDOC, True, None),                           # begins several classes: ambiguous
    ("polka-do", DTD, True, "polka-dotted"),
    ("cobweb", DTD, True, "cobwebbed"),
    ("banded, because the st", DTD, True, "banded"),               # begins no class: the naming rules
    ("Squash Powdery mild", PLANTDOC, True, "Squash Powdery mildew leaf"),
])
def test_parse_label_on_the_paper_classes(raw, classes, cut_off, expected):
    assert parse_label(raw, classes, cut_off=cut_off) == expected


@pytest.mark.parametrize("raw, classes, expected", [
    ("banded or striped", DTD, "banded"),
    ("striped or banded", DTD, "striped"),
    ("Apple leaf and Cherry leaf", PLANTDOC, "Apple leaf"),
    ("Eczema Photos or Urticaria Hives", DERMNET, "Eczema Photos"),
    ("not banded but striped", DTD, "striped"),                    # the negated naming is not the first
    ("It is polka-dotted", DTD, "polka-dotted"),                   # one class: the switch changes nothing
])
def test_several_classes_first_reads_the_class_named_first(raw, classes, expected):
    assert parse_label(raw, classes, several_classes="first") == expected
    from projection_probe.evaluate.parse import read_answer

    assert read_answer(raw, classes, several_classes="first") == expected


def test_unknown_several_classes_value_is_refused():
    with pytest.raises(InputError, match="classify.several_classes.*'last'"):
        parse_label("banded", DTD, several_classes="last")


class CutOffFacade:
    """Stands in for the MLLM in `classify_records`: scripted answers with their cut-off flags, and
    the `max_new_tokens` it was asked for."""

    class tokenizer:  # noqa: N801 - mimics facade.tokenizer
        eos_token = "</s>"

    def __init__(self, answers):
        self.answers = list(answers)
        self.max_new_tokens = None

    def build_inputs(self, prompts):
        return prompts

    def answer_token_ids(self, label):
        return label.split() + ["</s>"]

    def generate_answers(self, inputs, x_v, max_new_tokens, **kwargs):
        self.max_new_tokens = max_new_tokens
        batch, self.answers = self.answers[:len(inputs)], self.answers[len(inputs):]
        return [raw for raw, _ in batch], [cut for _, cut in batch]


def test_classify_tells_the_parser_which_answers_were_cut_off():
    import torch

    from projection_probe.evaluate.classify import MAX_NEW_TOKENS_MARGIN, classify_records

    class Cache:
        def select(self, paths):
            return torch.zeros(len(paths), 1, 1)

    cut = " Actinic Keratosis Basal Cell Carcinoma and other Mal"
    facade = CutOffFacade([(cut, True), (cut, False), ("Eczema Photos", False)])
    records = [{"image": f"{i}.png", "label": ACTINIC, "conversations": [{"from": "human", "value": "<image>\n?"}]}
               for i in range(3)]
    frame = classify_records(facade, records, Cache(), DERMNET, mode="generate", batch_size=2)
    assert frame["parsed"].tolist() == [ACTINIC, "", "Eczema Photos"]
    # derived: the longest class here is 9 words + EOS in this stand-in's tokens
    assert facade.max_new_tokens == 10 + MAX_NEW_TOKENS_MARGIN


def test_generate_answers_flags_rows_that_ran_out_of_tokens(monkeypatch):
    import torch

    from projection_probe.models.facade import MultimodalLM
    from projection_probe.testing.tiny import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    facade = MultimodalLM(None, torch.nn.Linear(2, 2), None, tokenizer, num_image_tokens=1)
    ids = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    rows = [ids("banded"), ids("the texture is banded and"), ids("striped\n")]
    budget = len(rows[1])  # row 1 used every token without ending
    rows[2] = ids(" ") * (budget - len(rows[2])) + rows[2]  # row 2's newline is its last allowed token
    assert len(rows[0]) < budget and len(rows[2]) == budget
    monkeypatch.setattr(facade, "_greedy", lambda *args, **kwargs: [list(r) for r in rows])
    texts, cut_off = facade.generate_answers(None, None, max_new_tokens=budget)
    assert cut_off == [False, True, False]
    assert texts[0] == "banded"
    # without the newline stop, a full line is cut off too
    assert facade.generate_answers(None, None, max_new_tokens=budget, stop_at_newline=False)[1] == [False, True, True]
