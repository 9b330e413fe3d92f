"""The API reference (mkdocs + mkdocstrings, Markdown) renders docstrings as they are: a Sphinx
role such as :class:`X` would show up raw on the site. Inline code is ``X``."""

from __future__ import annotations

import re
from pathlib import Path

import asynclm

SPHINX_ROLE = re.compile(r":(?:py:)?[a-z]+:`[^`]+`")


def test_no_sphinx_roles_in_the_package() -> None:
    root = Path(asynclm.__file__).parent
    found = [
        f"{path.relative_to(root.parent)}:{number}: {match.group()}"
        for path in sorted(root.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for match in SPHINX_ROLE.finditer(line)
    ]
    assert not found, "Sphinx roles do not render in the mkdocs site; write ``name`` instead:\n" + "\n".join(found)
