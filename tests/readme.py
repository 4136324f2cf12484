"""The commands the READMEs show, for the tests that run them."""

from __future__ import annotations

import re


def console_commands(text: str, prefix: str) -> list[tuple[str, list[str]]]:
    """``$ <prefix> ...`` lines of the console blocks in ``text``: each command (without the
    prefix and without a trailing ``# comment``) with the lines shown after it."""
    found = []
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.DOTALL):
        lines = block.splitlines()
        for index, line in enumerate(lines):
            if line.startswith(f"$ {prefix} "):
                shown = []
                for following in lines[index + 1 :]:
                    if following.startswith("$ "):
                        break
                    shown.append(following)
                command = line.removeprefix(f"$ {prefix} ").split(" #", 1)[0].strip()
                found.append((command, shown))
    return found


def section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of any level."""
    start = text.index(heading) + len(heading)
    following = re.search(r"^#", text[start:], flags=re.MULTILINE)
    return text[start : start + following.start()] if following else text[start:]
