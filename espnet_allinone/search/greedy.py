"""Greedy search of mixed records for byte budgets.

Why greedy: the records of a 12-block model with 4 precisions and 3 widths
number in the billions, and scoring one costs seconds on a CPU; a descent
that lowers one block at a time needs a few evaluations per step. Method:

1. *Sensitivity pass*: from the largest record, each block lowered one step
   in precision or in width (per module kind with ``per_module``), the
   precision the front and output layers follow one step down
   (``part_precisions``), and the depth one step down, others full: the
   dev-error increase per byte saved of every move.
2. *Descent*: from the largest record, take the move with the lowest error
   increase per byte saved, until the smallest budget is met. Scores are
   lazy: a move whose score was measured in an older record is re-measured
   in the current one before it is taken (each re-measurement is a record
   one step from the current one, kept like every record scored), and a move
   just taken is measured afresh at its next step.

Every record scored is kept: the budget's pick is the lowest dev error
within it among all of them (uniform subsystems too, when scored), and the
Pareto front of exact bytes against dev error is over all of them.
Torch-free: the caller gives the byte count and the error of a record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from espnet_allinone.errors import AllInOneError
from espnet_allinone.search.records import KINDS, BlockChoice, MixedRecord, parts_bits
from espnet_allinone.subsystem import SearchSpace


class SearchError(AllInOneError, ValueError):
    """A search that cannot be done as asked (a budget below every record, no moves)."""


@dataclass(frozen=True)
class Candidate:
    """One scored record: its exact bytes, its dev error (%) and how it was reached."""

    record: MixedRecord
    bytes: int
    error: float
    how: str  # largest | sensitivity | descent | uniform
    uniform: str | None = None  # the subsystem string, for a uniform subsystem

    def to_dict(self) -> dict:
        return {"record": str(self.record), "bytes": self.bytes, "dev_error": self.error,
                "how": self.how, "uniform": self.uniform}


Move = tuple[str, int, str]
"""(``bits`` | ``width`` | ``parts`` | ``depth``, physical block (-1: none), module kind or "")."""


@dataclass
class SearchResult:
    candidates: list[Candidate]
    path: list[Candidate]  # the descent, largest first
    chosen: dict[int, Candidate] = field(default_factory=dict)  # budget -> pick

    @property
    def front(self) -> list[Candidate]:
        return pareto_front(self.candidates)


def pareto_front(cands: Iterable[Candidate]) -> list[Candidate]:
    """Candidates no other one beats on both bytes and error, smallest first (one per point)."""
    best: dict[tuple[int, float], Candidate] = {}
    for c in cands:
        best.setdefault((c.bytes, c.error), c)
    points = list(best.values())
    front = [c for c in points if not any(
        o.bytes <= c.bytes and o.error <= c.error and (o.bytes < c.bytes or o.error < c.error)
        for o in points)]
    return sorted(front, key=lambda c: (c.bytes, c.error))


def _lower(options: Sequence, value) -> object | None:
    """The next smaller option of a sorted tuple, None at the bottom."""
    i = options.index(value)
    return options[i - 1] if i > 0 else None


class GreedySearch:
    """Descent over the mixed records of ``space`` with ``blocks`` physical blocks."""

    def __init__(self, space: SearchSpace, blocks: int, used: Callable[[MixedRecord], set[int]],
                 size: Callable[[MixedRecord], int], error: Callable[[MixedRecord], float],
                 per_module: bool = False, log: Callable[[str], None] = print) -> None:
        self.space, self.blocks, self.used = space, blocks, used
        self.size, self._error = size, error
        self.kinds = KINDS if per_module else ("",)
        self.log = log
        self.scored: dict[MixedRecord, Candidate] = {}

    # --- records ------------------------------------------------------------------------
    def canonical(self, record: MixedRecord) -> MixedRecord:
        """``record`` without the choices of blocks past the last one its depth runs, and
        without a front/output precision equal to the one it follows anyway (records
        that run the same blocks the same way spell the same)."""
        used = self.used(record)
        parts = record.parts
        if parts is not None and parts == max(record.blocks[p].bits for p in used):
            parts = None
        return MixedRecord(record.depth, record.blocks[: max(used) + 1], parts)

    def largest(self) -> MixedRecord:
        s = self.space
        return self.canonical(MixedRecord(
            s.depths[-1], (BlockChoice.uniform(s.widths[-1], s.bits[-1]),) * self.blocks))

    def smallest(self) -> MixedRecord:
        s = self.space
        return self.canonical(MixedRecord(
            s.depths[0], (BlockChoice.uniform(s.widths[0], s.bits[0]),) * self.blocks))

    def score(self, record: MixedRecord, how: str, uniform: str | None = None) -> Candidate:
        """Score ``record`` once (later calls return the first result)."""
        record = self.canonical(record)
        if record not in self.scored:
            self.scored[record] = Candidate(record, self.size(record), self._error(record), how,
                                            uniform)
            c = self.scored[record]
            self.log(f"  {c.how:<11} {c.bytes:>12,} B  CER {c.error:6.2f}%  {record}")
        elif uniform and self.scored[record].uniform is None:  # the descent met a uniform one
            self.scored[record] = replace(self.scored[record], uniform=uniform)
        return self.scored[record]

    def moves(self, record: MixedRecord) -> list[tuple[Move, MixedRecord]]:
        """Every one-step lowering of ``record`` (blocks its depth runs; then the depth)."""
        out: list[tuple[Move, MixedRecord]] = []
        for k in sorted(self.used(record)):
            choice = record.blocks[k]
            bits = _lower(self.space.bits, choice.bits)
            if bits is not None:
                out.append((("bits", k, ""), record.replace_block(k, choice.replace(bits=bits))))
            for kind in self.kinds:
                at = choice.widths[KINDS.index(kind) if kind else 0]
                width = _lower(self.space.widths, at)
                if width is not None and (kind or choice.is_uniform):
                    lowered = choice.replace(kind=kind or None, width=width)
                    out.append((("width", k, kind), record.replace_block(k, lowered)))
        parts = _lower(self.space.bits, parts_bits(record, self.used(record)))
        if parts is not None:
            out.append((("parts", -1, ""), MixedRecord(record.depth, record.blocks, parts)))
        depth = _lower(self.space.depths, record.depth)
        if depth is not None:
            out.append((("depth", -1, ""), MixedRecord(depth, record.blocks, record.parts)))
        return [(move, self.canonical(r)) for move, r in out]

    # --- the search ---------------------------------------------------------------------
    def check_budgets(self, budgets: Iterable[int]) -> int:
        """The smallest record's bytes; SearchError when a budget is below it."""
        floor = self.size(self.smallest())
        low = [b for b in budgets if b < floor]
        if low:
            raise SearchError(f"budget {min(low)} bytes is below every record this model can "
                              f"make: the smallest reachable size is {floor} bytes "
                              f"({self.smallest()})")
        return floor

    def run(self, budgets: Sequence[int], extra: Iterable[tuple[MixedRecord, str]] = ()
            ) -> SearchResult:
        """Sensitivity pass, descent to the smallest budget, a pick per budget."""
        if not budgets:
            raise SearchError("give at least one byte budget")
        self.check_budgets(budgets)
        target = min(budgets)
        current = self.score(self.largest(), "largest")
        path = [current]
        delta: dict[Move, tuple[float, MixedRecord]] = {}  # error increase, measured from
        for move, nxt in self.moves(current.record) if current.bytes > target else ():
            if self.size(nxt) < current.bytes:  # the sensitivity pass
                delta[move] = (self.score(nxt, "sensitivity").error - current.error,
                               current.record)
        while current.bytes > target:
            current = self._step(current, delta)
            path.append(current)
        for record, sub in extra:
            self.score(record, "uniform", sub)
        result = SearchResult(list(self.scored.values()), path)
        for budget in budgets:
            within = [c for c in result.candidates if c.bytes <= budget]
            result.chosen[budget] = min(within, key=lambda c: (c.error, c.bytes))
        return result

    def _step(self, current: Candidate, delta: dict[Move, tuple[float, MixedRecord]]
              ) -> Candidate:
        """Take the cheapest move (error per byte saved), re-measuring stale scores first."""
        options = {}
        for move, nxt in self.moves(current.record):
            saved = current.bytes - self.size(nxt)
            if saved > 0:
                options[move] = (nxt, saved)
        if not options:
            raise SearchError(f"no move saves bytes from {current.record}")


        def key(move: Move) -> tuple:
            saved = options[move][1]
            d = delta[move][0] if move in delta else -float("inf")  # unknown: measure first
            return (d / saved, -saved, move)

        while True:
            best = min(options, key=key)
            nxt, _ = options[best]
            if best in delta and delta[best][1] == current.record:
                break  # measured in this very record: take it
            delta[best] = (self.score(nxt, "descent").error - current.error, current.record)
        del delta[best]  # its next step is measured afresh
        return self.scored[nxt]
