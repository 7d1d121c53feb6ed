"""Model formulas in lme4 syntax: ``"y ~ x1 + x2 + (1|lot/wafer) + (1|tool)"``.

Random terms:

* ``(1 | g)``: a random intercept. ``(1 | a/b)`` expands to the terms ``a`` and
  ``a:b`` (b nested in a); ``(1 | a:b)`` is one term whose levels are the
  combinations of a and b.
* ``(x | g)`` or ``(1 + x | g)``: a random intercept and slope per level of g with an
  unstructured (correlated) covariance; ``(0 + x | g)``: the slope alone; any number of
  columns (the effects part is a formula of its own, built like the fixed part).
* ``(x || g)``: uncorrelated, i.e. ``(1 | g) + (0 + x | g)`` (lme4's expansion: one term
  per column).
* ``ar1(time | g)`` (glmmTMB's ``ar1(factor(time) + 0 | g)`` is read the same): an AR(1)
  process over the ordered levels of ``time`` within each level of ``g``.

Vector and structured terms take no nesting (``/``). ``offset(expr)`` terms of the fixed
part (as in R, e.g. ``offset(log(E))``) are taken out of it: they enter the linear predictor
with coefficient 1, and several add up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RANDOM_RE = re.compile(r"\(\s*([^()|]*?)\s*(\|\|?)\s*([^()|]+?)\s*\)")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_INTERCEPT = ("1",)


@dataclass(frozen=True)
class RandomTerm:
    """One random term: its levels are the combinations of ``factors``.

    ``effects``: the columns per level, as formula terms ("1" the intercept); ``("1",)`` is
    a random intercept. ``structure``: ``"ar1"`` for ``ar1(time | g)`` (``time`` names the
    column whose ordered levels the process runs over), else None."""

    factors: tuple[str, ...]
    effects: tuple[str, ...] = _INTERCEPT
    structure: str | None = None
    time: str | None = None

    @property
    def group(self) -> str:
        return ":".join(self.factors)

    @property
    def name(self) -> str:
        """Unique name of the term: the grouping for an intercept (alone or with slopes) and
        for ``ar1``; ``g.x`` for slopes without an intercept (lme4 calls it ``g.1``)."""
        if self.structure is not None or "1" in self.effects:
            return self.group
        return self.group + "." + ".".join(self.effects)

    @property
    def intercept_only(self) -> bool:
        return self.effects == _INTERCEPT and self.structure is None

    @property
    def label(self) -> str:
        if self.structure is not None:
            return f"{self.structure}({self.time} | {self.group})"
        if "1" in self.effects:
            lhs = " + ".join(e for e in self.effects if e != "1")
            return f"({lhs or '1'} | {self.group})"
        return f"(0 + {' + '.join(self.effects)} | {self.group})"

    @property
    def effects_formula(self) -> str:
        """Right-hand side whose model matrix gives the term's columns per row."""
        slopes = [e for e in self.effects if e != "1"]
        if "1" in self.effects:
            return " + ".join(["1", *slopes])
        return " + ".join(["0", *slopes])


@dataclass(frozen=True)
class ModelFormula:
    response: str
    fixed: str  # right-hand side of the fixed part, formulaic syntax
    random: tuple[RandomTerm, ...]
    offsets: tuple[str, ...] = ()  # the expressions inside offset(...), in formula order

    @property
    def fixed_formula(self) -> str:
        return f"{self.response} ~ {self.fixed}"


def _expand_grouping(expr: str) -> list[RandomTerm]:
    parts = [p.strip() for p in expr.split("/")]
    if any(not p for p in parts):
        raise ValueError(f"malformed grouping {expr!r}")
    terms: list[RandomTerm] = []
    prefix: tuple[str, ...] = ()
    for part in parts:
        factors = _grouping_factors(part, expr)
        prefix = prefix + factors
        terms.append(RandomTerm(prefix))
    return terms


def _grouping_factors(part: str, expr: str) -> tuple[str, ...]:
    factors = tuple(f.strip() for f in part.split(":"))
    if any(not _NAME_RE.fullmatch(f) for f in factors):
        raise ValueError(f"grouping factors must be column names, got {part!r} in {expr!r}")
    return factors


def _effects(lhs: str, term_text: str) -> tuple[bool, list[str]]:
    """(has an intercept, slope terms) of the left-hand side of a random term."""
    intercept = True
    slopes: list[str] = []
    for raw in re.split(r"\s*\+\s*", lhs.strip()):
        part = raw.strip()
        if part in ("1", ""):
            continue
        if part in ("0", "-1") or re.fullmatch(r"-\s*1", part):
            intercept = False
            continue
        # "x - 1" / "-1 + x" written inside one piece
        m = re.fullmatch(r"(.+?)\s*-\s*1", part)
        if m:
            intercept = False
            part = m.group(1).strip()
        if not part:
            continue
        slopes.append(part)
    if not intercept and not slopes:
        raise ValueError(f"random term {term_text} has no columns")
    return intercept, slopes


def _vector_terms(lhs: str, bars: str, grouping: str, text: str) -> list[RandomTerm]:
    intercept, slopes = _effects(lhs, text)
    if not slopes:
        return _expand_grouping(grouping)
    if "/" in grouping:
        raise ValueError(
            f"nesting (a/b) is supported for random intercepts only, got {text}; "
            "write one term per level of nesting"
        )
    factors = _grouping_factors(grouping, text)
    if bars == "||":  # lme4: one term per column, uncorrelated
        cols = (["1"] if intercept else []) + slopes
        return [RandomTerm(factors, (c,)) for c in cols]
    return [RandomTerm(factors, tuple((["1"] if intercept else []) + slopes))]


def _extract_ar1(rhs: str) -> tuple[str, list[RandomTerm]]:
    """Take the ``ar1(time | g)`` terms out of the right-hand side (balanced parentheses)."""
    terms: list[RandomTerm] = []
    out = []
    pos = 0
    for m in re.finditer(r"\bar1\s*\(", rhs):
        if m.start() < pos:
            continue
        depth, i = 1, m.end()
        while i < len(rhs) and depth:
            depth += {"(": 1, ")": -1}.get(rhs[i], 0)
            i += 1
        if depth:
            raise ValueError(f"unbalanced parentheses in {rhs[m.start() :]!r}")
        inner = rhs[m.end() : i - 1]
        text = rhs[m.start() : i]
        if inner.count("|") != 1:
            raise ValueError(f"write an AR(1) term as ar1(time | group), got {text!r}")
        lhs, grouping = (s.strip() for s in inner.split("|"))
        # glmmTMB spells it ar1(factor(time) + 0 | g): the time column is what matters
        pieces = [p.strip() for p in re.split(r"\s*\+\s*", lhs) if p.strip() not in ("0", "")]
        if len(pieces) != 1:
            raise ValueError(f"ar1() takes one time column, got {lhs!r} in {text!r}")
        tm = re.fullmatch(r"(?:factor\(\s*)?([A-Za-z_][\w.]*)\s*\)?", pieces[0])
        if not tm:
            raise ValueError(f"the time of {text!r} must be a column name, got {pieces[0]!r}")
        if "/" in grouping:
            raise ValueError(f"ar1() takes one grouping factor, got {grouping!r} in {text!r}")
        factors = _grouping_factors(grouping, text)
        terms.append(RandomTerm(factors, structure="ar1", time=tm.group(1)))
        out.append(rhs[pos : m.start()])
        pos = i
    out.append(rhs[pos:])
    return "".join(out), terms


_OFFSET_RE = re.compile(r"(?<![\w.])offset\s*\(")


def _extract_offsets(rhs: str) -> tuple[str, list[str]]:
    """Take the ``offset(...)`` terms out of a right-hand side: (rest, their expressions).

    Parentheses are matched by counting (``offset(log(E))``), which a regular expression
    cannot do. An offset must be added (``+ offset(x)``), not subtracted or interacted."""
    exprs: list[str] = []
    while (m := _OFFSET_RE.search(rhs)) is not None:
        depth, end = 1, m.end()
        while end < len(rhs) and depth:
            depth += {"(": 1, ")": -1}.get(rhs[end], 0)
            end += 1
        if depth:
            raise ValueError(f"unbalanced parentheses in offset term of {rhs!r}")
        expr = rhs[m.end() : end - 1].strip()
        if not expr:
            raise ValueError("offset() needs an expression, e.g. offset(log(E))")
        before = rhs[: m.start()].rstrip()
        after = rhs[end:].lstrip()
        if (before and before[-1] != "+") or (after and after[0] not in "+-"):
            raise ValueError(
                f"offset({expr}) must be added to the formula (+ offset(...)); "
                f"it cannot be subtracted, multiplied or interacted"
            )
        exprs.append(expr)
        # drop the '+' that joined the offset to its neighbour
        if before:
            before = before[:-1]
        elif after.startswith("+"):
            after = after[1:]
        rhs = (before.rstrip() + " " + after.lstrip()).strip()
    return rhs, exprs


def parse_formula(formula: str) -> ModelFormula:
    """Split a mixed-model formula into response, fixed part and random terms."""
    if "~" not in formula:
        raise ValueError(f"formula {formula!r} has no '~'")
    lhs, rhs = formula.split("~", 1)
    response = lhs.strip()
    if not response:
        raise ValueError(f"formula {formula!r} has no response")
    rhs, terms = _extract_ar1(rhs)
    for m in _RANDOM_RE.finditer(rhs):
        effect, bars, grouping = m.group(1).strip(), m.group(2), m.group(3)
        terms.extend(_vector_terms(effect, bars, grouping, m.group(0)))
    fixed, offsets = _extract_offsets(_RANDOM_RE.sub("", rhs))
    # tidy the '+' left behind by removed random terms
    fixed = re.sub(r"\+\s*(\+\s*)+", "+ ", fixed)
    fixed = re.sub(r"^\s*\+|\+\s*$", "", fixed.strip()).strip()
    if not fixed:
        fixed = "1"
    if "|" in fixed:
        raise ValueError(f"cannot read random part of {formula!r}; write terms as (1 | g)")
    names = [t.name for t in terms]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"random term(s) {sorted(dupes)} appear more than once")
    return ModelFormula(response=response, fixed=fixed, random=tuple(terms), offsets=tuple(offsets))


def normalise_term_key(key: str) -> str:
    """Accept ``"(1|a:b)"``, ``"(1 | a:b)"`` or ``"a:b"`` as the name of a term."""
    m = re.fullmatch(r"\s*\(\s*1\s*\|\s*(.+?)\s*\)\s*", key)
    inner = m.group(1) if m else key
    return ":".join(p.strip() for p in inner.split(":"))
