"""Plain text as LaTeX source that typesets it as written.

Table labels come from records (algorithm, dataset and loss names), which anyone can spell with
any character: each of LaTeX's special characters becomes the command that prints it, and a
line break becomes a space, so that a name can neither end a table row (`\\\\`), open a comment
(`%`) or a group, nor run as a command.
"""

from __future__ import annotations

_SPECIAL = {
    "\\": r"\textbackslash{}",
    "$": r"\$",
    "^": r"\^{}",
    "~": r"\~{}",
    "{": r"\{",
    "}": r"\}",
    "&": r"\&",
    "%": r"\%",
    "#": r"\#",
    "_": r"\_",
}


def one_line(text: str) -> str:
    """`text` with each line break (and the blanks around it) replaced by one space; text
    without a line break as it is."""
    lines = text.splitlines()
    if lines == [text]:
        return text
    return " ".join(line.strip() for line in lines if line.strip())


def escape(text: str) -> str:
    """LaTeX source that prints `text` on one line, character for character."""
    return "".join(_SPECIAL.get(char, char) for char in one_line(text))
