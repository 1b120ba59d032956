"""``options.fill`` wraps ``persistf``'s docstring at import without textwrap (issue 15): it
must give textwrap's text exactly."""

import textwrap

import pytest

from persist_to_disk import options

TEXTS = [
    "",
    "one",
    "a b c",
    "  leading spaces, then words that go on and on and on past the width of the line",
    "a-very-long-hyphenated-word-that-is-longer-than-any-line-of-the-width-chosen-here ok",
    "tabs\tand\nline breaks\r\nand\x0bvertical\x0cforms   and  runs of   spaces   ",
    "non\xa0breaking\xa0spaces are not whitespace to textwrap, nor is\u2003this em space",
    "x " * 200,
]


@pytest.mark.parametrize("width", [10, 20, 37, 96])
@pytest.mark.parametrize("text", TEXTS)
def test_fill_gives_textwraps_text(text, width):
    expected = textwrap.fill(text, width=width, initial_indent=" " * 4,
                             subsequent_indent=" " * 8, break_on_hyphens=False,
                             break_long_words=False)
    assert options.fill(text, width, " " * 4, " " * 8) == expected


def test_the_args_of_persistfs_docstring_are_textwraps():
    for field in options.FIELDS:
        names = " / ".join((field.name,) + field.metadata["aliases"])
        text = f"{names}: {field.metadata['doc']}"
        assert options.fill(text, 96, " " * 8, " " * 12) == textwrap.fill(
            text, width=96, initial_indent=" " * 8, subsequent_indent=" " * 12,
            break_on_hyphens=False, break_long_words=False)
