"""Instructions of the pick task: phrasings per colour, and which cube a typed instruction names.

The sim, the collector (each episode stores every phrasing of its target, so training samples them) and the
demo share these. A typed instruction names a cube when exactly one known colour word appears in it; "pick up
the cube" or "move red next to blue" name none, and the sim refuses them rather than guessing.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Iterator, Sequence

# The first phrasing is the canonical one (demo cycles, tables); the others are paraphrases.
PHRASINGS = ("pick up the {color} cube", "grab the {color} block", "lift the {color} cube")


def phrasings(color: str) -> list[str]:
    """Every phrasing of "pick the <color> cube", canonical first."""
    return [template.format(color=color) for template in PHRASINGS]


def instruction_for(color: str, phrasing: int = 0) -> str:
    if not 0 <= phrasing < len(PHRASINGS):
        raise ValueError(f"phrasing must be in [0, {len(PHRASINGS)}), got {phrasing}")
    return PHRASINGS[phrasing].format(color=color)


def named_color(instruction: str, colors: Sequence[str]) -> str:
    """The one colour of `colors` that `instruction` names (whole words, any case); ValueError otherwise."""
    words = set(re.findall(r"[a-z]+", instruction.lower()))
    named = [c for c in colors if c in words]
    if len(named) != 1:
        which = "no" if not named else f"{len(named)} ({', '.join(named)})"
        raise ValueError(f"instruction {instruction!r} names {which} cube colours; it must name exactly one of "
                         f"{list(colors)}, e.g. {instruction_for(colors[0])!r}")
    return named[0]


def episode_instruction(episode: int, colors: Sequence[str]) -> str:
    """Episode k of a demo or evaluation: colours in turn, phrasings in turn after each round of colours, so
    every (colour, phrasing) pair comes equally often in len(colors) * len(PHRASINGS) episodes."""
    return instruction_for(colors[episode % len(colors)], (episode // len(colors)) % len(PHRASINGS))


QUIT_WORDS = ("quit", "exit", "q")


def typed_instructions(lines: Iterable[str], colors: Sequence[str], prompt: Callable[[str], None],
                       complain: Callable[[str], None]) -> Iterator[str]:
    """Instructions typed one a line (gem_demo --interactive) until EOF or a quit word. Blank lines are
    skipped; a line naming no cube on the table, or several, is refused with the reason and the prompt again."""
    prompt("instruction> ")
    for line in lines:
        text = line.strip()
        if text.lower() in QUIT_WORDS:
            return
        if text:
            try:
                named_color(text, colors)
            except ValueError as error:
                complain(str(error))
            else:
                yield text
        prompt("instruction> ")
