"""What the report's section builders share: the section type, the categories and LeapAlign's cost targets."""

from __future__ import annotations

from dataclasses import dataclass, field

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
MEM_TARGET, TIME_TARGET = 1.15, 1.35
NOT_RUN = "**Not yet run.**"


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        keep = "".join(c for c in self.title.lower() if c.isalnum() or c in " -")
        return keep.replace(" ", "-")
