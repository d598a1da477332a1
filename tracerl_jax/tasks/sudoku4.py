"""4x4 Sudoku with a unique solution; the answer is the filled 16-digit grid."""
from __future__ import annotations

import dataclasses
import functools
import random

from tracerl_jax.tasks.answers import (boxed_answers, distinct_answers,
                                       is_disjunction)
from tracerl_jax.tasks.base import Task, check_int
from tracerl_jax.tasks.example import Example

# Cells are numbered 0..15 in reading order; each unit is a row, a column or
# a 2x2 box.
_UNITS = ([[4 * r + c for c in range(4)] for r in range(4)]
          + [[4 * r + c for r in range(4)] for c in range(4)]
          + [[4 * (2 * br + r) + 2 * bc + c for r in range(2) for c in range(2)]
             for br in range(2) for bc in range(2)])
_PEERS = [sorted({p for u in _UNITS if i in u for p in u} - {i})
          for i in range(16)]
# A 4x4 puzzle with a unique solution needs at least 4 givens.
MAX_BLANKS = 12


def count_solutions(cells: list[int], limit: int = 2) -> int:
    """Counts completions of a partial grid, stopping at ``limit``.

    Args:
      cells: 16 ints, 0 for blank, 1-4 for a given.
      limit: stop counting once this many solutions are found.

    Returns:
      ``min(number of solutions, limit)``.
    """
    try:
        i = cells.index(0)
    except ValueError:
        return 1
    used = {cells[p] for p in _PEERS[i]}
    found = 0
    for d in range(1, 5):
        if d not in used:
            cells[i] = d
            found += count_solutions(cells, limit - found)
            cells[i] = 0
            if found >= limit:
                break
    return found


@functools.cache
def _all_grids() -> tuple[tuple[int, ...], ...]:
    """All 288 solved 4x4 grids, in lexicographic order."""
    grids = []

    def fill(cells: list[int]) -> None:
        if 0 not in cells:
            grids.append(tuple(cells))
            return
        i = cells.index(0)
        for d in range(1, 5):
            if all(cells[p] != d for p in _PEERS[i]):
                cells[i] = d
                fill(cells)
                cells[i] = 0

    fill([0] * 16)
    return tuple(grids)


def is_solution(grid: list[int], puzzle: str) -> bool:
    """Checks a filled grid: every unit is 1-4 once and the givens are kept.

    Args:
      grid: 16 ints.
      puzzle: the 16-character puzzle, ``"0"`` for blank.

    Returns:
      True iff ``grid`` solves ``puzzle``.
    """
    if len(grid) != 16 or any(g not in (1, 2, 3, 4) for g in grid):
        return False
    if any(p != "0" and int(p) != g for p, g in zip(puzzle, grid)):
        return False
    return all({grid[i] for i in unit} == {1, 2, 3, 4} for unit in _UNITS)


@dataclasses.dataclass(frozen=True)
class Sudoku4(Task):
    """``Solve the 4x4 sudoku (0 = blank): 1030 ...`` -> ``\\boxed{1234...}``.

    The worked solution lists the digits that fill the blanks in reading
    order, then the whole grid.

    Attributes:
      blanks: number of empty cells (1 to ``MAX_BLANKS``); every puzzle has
        exactly one solution.
    """

    name = "sudoku4"

    blanks: int = 6

    def __post_init__(self):
        check_int("blanks", self.blanks, 1, MAX_BLANKS)

    def sample(self, rng: random.Random) -> Example:
        while True:
            grid = list(rng.choice(_all_grids()))
            puzzle = list(grid)
            order = rng.sample(range(16), 16)
            removed = 0
            # Carve cells in random order, keeping the solution unique; a dead end
            # (every further removal ambiguous) restarts from a fresh grid.
            for cell in order:
                puzzle[cell] = 0
                if count_solutions(puzzle) == 1:
                    removed += 1
                    if removed == self.blanks:
                        break
                else:
                    puzzle[cell] = grid[cell]
            if removed == self.blanks:
                break
        text = "".join(map(str, puzzle))
        answer = "".join(map(str, grid))
        rows = " ".join(text[4 * r:4 * r + 4] for r in range(4))
        fills = " ".join(str(g) for g, p in zip(grid, puzzle) if p == 0)
        return Example(
            question=f"Solve the 4x4 sudoku (0 = blank): {rows}",
            answer=answer,
            solution=f"Blanks: {fills}. \\boxed{{{answer}}}",
            meta={"puzzle": text})

    def canonical(self, example: Example) -> str:
        return example.meta["puzzle"]

    def score(self, response: str, example: Example) -> float:
        """1.0 iff every box not echoed from the question holds the solved grid."""
        answers = distinct_answers(boxed_answers(response, example.question))
        if not answers or any(len(a) > 200 or is_disjunction(a) for a in answers):
            return 0.0
        # Rows may be separated by spaces, slashes or newlines; only digits count. The solution
        # is unique, so boxes that all solve the puzzle hold one grid.
        return float(all(
            is_solution([int(c) for c in a if c in "0123456789"], example.meta["puzzle"])
            for a in answers))
