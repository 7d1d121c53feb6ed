"""Model formulas in lme4 syntax: ``"y ~ x1 + x2 + (1|lot/wafer) + (1|tool)"``.

Only random intercepts ``(1 | g)`` are supported. ``(1 | a/b)`` expands to the
terms ``a`` and ``a:b`` (b nested in a); ``(1 | a:b)`` is one term whose levels
are the combinations of a and b. ``offset(expr)`` terms of the fixed part (as in R,
e.g. ``offset(log(E))``) are taken out of it: they enter the linear predictor with
coefficient 1, and several add up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RANDOM_RE = re.compile(r"\(\s*([^()|]*?)\s*\|\s*([^()|]+?)\s*\)")


@dataclass(frozen=True)
class RandomTerm:
    """One random intercept: its levels are the combinations of ``factors``."""

    factors: tuple[str, ...]

    @property
    def name(self) -> str:
        return ":".join(self.factors)

    @property
    def label(self) -> str:
        return f"(1 | {self.name})"


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
        factors = tuple(f.strip() for f in part.split(":"))
        if any(not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", f) for f in factors):
            raise ValueError(f"grouping factors must be column names, got {part!r} in {expr!r}")
        prefix = prefix + factors
        terms.append(RandomTerm(prefix))
    return terms


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
    terms: list[RandomTerm] = []
    for m in _RANDOM_RE.finditer(rhs):
        effect = m.group(1).strip()
        if effect != "1":
            raise ValueError(
                f"only random intercepts (1 | g) are supported, got ({effect} | {m.group(2)})"
            )
        terms.extend(_expand_grouping(m.group(2)))
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
