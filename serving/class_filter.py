"""The `classes` choice of a request or a predict job: which of a model's classes to report.

A client names classes by name ("wall", "chest of drawers"; case and surrounding blanks do not
matter) or by id ("0", "12"), comma-separated and/or repeated. Every output then reports only
those: the label map marks other pixels `filtered_value()` (255, the ignore label of every
shipped dataset), the colour mask makes them transparent, the overlay leaves them unpainted, the
confidence map makes them 0, and JSON/RLE answers list only the chosen classes. No name in the
shipped datasets contains a comma, so a comma always separates two classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


class ClassFilterError(ValueError):
    """A class that the model does not have, or an empty choice; the message lists the valid ones."""


def filtered_value(num_classes: int) -> int:
    """What the label map holds for a pixel of a class not chosen: 255 (the ignore label) while
    255 is no class id, else 65535 (16-bit label PNGs)."""
    return 255 if num_classes <= 255 else 65535


def _valid(classes: Sequence[str]) -> str:
    return ", ".join(f"{index} {name}" for index, name in enumerate(classes))


def parse_classes(values: str | Iterable[str] | None, classes: Sequence[str]) -> tuple[int, ...] | None:
    """The chosen class ids, ascending and without repeats; None when nothing was given (all classes).

    `values`: one comma-separated string or several (a repeated query parameter). A token that is
    a class name (compared without case) is that class; otherwise a decimal number is an id.
    Raises ClassFilterError naming every unknown token and the model's valid classes.
    """
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    tokens = [token.strip() for value in values for token in value.split(",")]
    if not any(tokens):
        raise ClassFilterError("classes: give at least one class name or id")
    by_name = {name.strip().lower(): index for index, name in enumerate(classes)}
    chosen, unknown = set(), []
    for token in tokens:
        if not token:
            continue
        index = by_name.get(token.lower())
        if index is None and token.isdecimal() and int(token) < len(classes):
            index = int(token)
        if index is None:
            unknown.append(token)
        else:
            chosen.add(index)
    if unknown:
        names = ", ".join(repr(token) for token in unknown)
        raise ClassFilterError(f"classes: unknown class {names}; the model's classes are (id name): {_valid(classes)}")
    return tuple(sorted(chosen))


def kept_mask(label: np.ndarray, chosen: Sequence[int]) -> np.ndarray:
    """(H, W) bool: the pixels whose class is among `chosen` (one table lookup per pixel)."""
    table = np.zeros(max(256, int(label.max(initial=0)) + 1), dtype=bool)
    table[list(chosen)] = True
    return table[label]


def filter_label(label: np.ndarray, chosen: Sequence[int] | None, num_classes: int) -> np.ndarray:
    """The label map with every pixel of a class not chosen set to `filtered_value(num_classes)`."""
    if chosen is None:
        return label
    value = filtered_value(num_classes)
    if value > np.iinfo(label.dtype).max:
        label = label.astype(np.int32)  # 256+ classes in a uint8 map cannot happen; this is for safety
    return np.where(kept_mask(label, chosen), label, np.asarray(value, dtype=label.dtype))
