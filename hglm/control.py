"""The fitting methods and the options of a fit, in one validated object (``FitControl``).

Imports nothing of ``hglm``: the algorithms read their settings from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

METHODS = ("EQL", "HL(0,1)", "HL(1,1)")


def normalise_method(method: str) -> str:
    """The canonical spelling of a fitting method.

    Parameters
    ----------
    method : str
        ``"EQL"``, ``"HL(0,1)"`` or ``"HL(1,1)"``, in any case, with or without blanks, or
        ``"HL01"`` / ``"HL11"``.

    Returns
    -------
    str
        One of ``METHODS``.
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, one of {METHODS}; got {method!r}")
    m = re.sub(r"\s+", "", method).upper()
    m = {"HL01": "HL(0,1)", "HL11": "HL(1,1)"}.get(m, m)
    if m not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return m


@dataclass(frozen=True)
class FitControl:
    """Options of a fit: iteration limits, tolerances and what to compute within the fit.

    Parameters
    ----------
    max_iter : int
        EQL rounds at most (an EQL fit, or the EQL pass that starts an HL search); also the
        limit of each round's IWLS.
    eql_tol : float
        EQL stops when the squared change of eta falls below ``eql_tol`` times its squared
        size (R hglm's rule and default, 1e-6).
    eql_start_tol : float
        The same for the EQL pass that only starts an HL search: settled to 1e-4 is close
        enough (the search takes as many steps from there; measured on benchmark cases 1-5).
    outer_max_iter : int
        Iterations at most of the quasi-Newton searches of the HL methods (dispersions, and
        beta for HL(1,1)).
    dispersion_se : bool
        Compute the HL standard errors of the log-dispersion parameters within the fit
        (otherwise when first read).

    Returns
    -------
    FitControl
        A frozen, validated set of options; change one with ``dataclasses.replace``.
    """

    max_iter: int = 50
    eql_tol: float = 1e-6
    eql_start_tol: float = 1e-4
    outer_max_iter: int = 500
    dispersion_se: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("max_iter", "outer_max_iter"):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(
                        f"FitControl.{f.name} must be a positive integer, got {value!r}"
                    )
            elif f.name in ("eql_tol", "eql_start_tol"):
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not 0.0 < float(value) < 1.0
                ):
                    raise ValueError(
                        f"FitControl.{f.name} must be a number between 0 and 1, got {value!r}"
                    )
            elif f.name == "dispersion_se" and not isinstance(value, bool):
                raise ValueError(f"FitControl.dispersion_se must be True or False, got {value!r}")
