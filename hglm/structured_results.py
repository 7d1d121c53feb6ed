"""StructuredResult: a fit with random slopes or correlated random effects.

Tables as lme4 prints them (``varcomp``: variances, SDs and correlations per term, and the
structure parameters rho and tau), the structure parameters with SEs (``structure_params``)
and profile-likelihood intervals (``profile_ci``), the likelihoods, prediction, ``to_dict``
and ``summary``. The SEs of the variance parameters come from a finite-difference Hessian of
the criterion the fit maximised, on the unconstrained scale, computed on first use.

May import: ``hglm.design``, ``hglm.diagnostics``, ``hglm.results``, ``hglm.summary``,
``hglm.structured``, ``hglm.structured_terms``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.optimize
from scipy import stats

from hglm.design import ModelDesign, new_fixed_matrix, to_pandas
from hglm.diagnostics import ConvergenceCode, Diagnostics
from hglm.results import _json
from hglm.structured import StructuredFit, maximise, numeric_hessian
from hglm.structured_terms import StructuredTerm
from hglm.summary import Summary, _coef_table


@dataclass
class StructuredResult:
    """A fitted HGLM with structured random effects. Build it with ``hglm.fit``."""

    fit: StructuredFit
    method: str
    reml: bool
    call: str
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    _x_cov: np.ndarray | None = None

    # ------------------------------------------------------------------ basics
    @property
    def design(self) -> ModelDesign:
        return self.fit.model.design

    @property
    def terms(self) -> list[StructuredTerm]:
        return self.fit.model.terms

    @property
    def converged(self) -> bool:
        return self.fit.converged

    @property
    def n_iter(self) -> int:
        return self.fit.n_iter

    @property
    def diagnostics(self) -> Diagnostics:
        """The fit's status (``hglm.diagnostics.Diagnostics``); ``singular_terms``: the terms
        with a variance (or Sigma's conditional SD) at its lower bound."""
        if self.fit.converged:
            code = ConvergenceCode.CONVERGED
        elif self.method == "EQL":
            code = ConvergenceCode.MAX_ITERATIONS
        else:
            code = ConvergenceCode.OPTIMISER_FAILED
        return Diagnostics(
            converged=self.fit.converged,
            code=code,
            iterations=self.fit.n_iter,
            singular_terms=tuple(self.fit.singular),
            messages=tuple(m for m in self.fit.messages if not m.startswith("singular fit")),
        )

    @property
    def nobs(self) -> int:
        return self.design.n

    @property
    def leverages(self) -> np.ndarray:
        return self.fit.leverages

    @property
    def df_residual(self) -> int:
        return round(self.nobs - float(np.sum(self.leverages)))

    @property
    def fitted(self) -> np.ndarray:
        return self.fit.evaluation.mode.mu

    @property
    def phi(self) -> float | None:
        if self.fit.quasi_gamma is not None and self.design.X_disp.shape[1] == 1:
            return float(np.exp(self.fit.quasi_gamma[0] * self.design.X_disp[0, 0]))
        if self.fit.model.phi_fixed:
            return 1.0
        if self.design.X_disp.shape[1] == 1:
            return float(np.exp(self.fit.gamma[0] * self.design.X_disp[0, 0]))
        return None

    @property
    def likelihood(self) -> dict[str, float]:
        ev = self.fit.evaluation
        caic = -2.0 * ev.conditional + 2.0 * float(np.sum(self.leverages))
        return {"h": ev.h, "p_v": ev.p_v, "p_beta_v": ev.p_beta_v, "caic": caic}

    # ----------------------------------------------------------------- tables
    @property
    def fixef(self) -> pd.DataFrame:
        mode = self.fit.evaluation.mode
        est = mode.beta
        se = np.sqrt(np.diag(mode.solution.cov_beta))
        stat = est / se
        if not self.design.family.fixed_dispersion:
            p = 2 * stats.t.sf(np.abs(stat), max(self.df_residual, 1))
            name = "t"
        else:
            p = 2 * stats.norm.sf(np.abs(stat))
            name = "z"
        return pd.DataFrame(
            {"estimate": est, "se": se, name: stat, "p": p},
            index=pd.Index(self.design.fixed_names, name="term"),
        )

    def _theta(self, k: int) -> np.ndarray:
        return self.fit.model.theta_of(self.fit.theta, k)

    @property
    def ranef(self) -> dict[str, pd.DataFrame]:
        """Per term: the predicted effects (one column per effect; AR(1): per group x time)
        and their prediction SEs (``se:<column>``)."""
        out = {}
        v = self.fit.model.split(self.fit.evaluation.mode.v)
        var = self.fit.model.split(self.fit.level_var)
        for t, vk, sk in zip(self.terms, v, var, strict=True):
            k = len(t.columns) if t.kind == "slopes" else 1
            index = t.unknowns if k == 1 else pd.Index(t.design.levels.astype(str), name=t.name)
            vals = vk.reshape(-1, k)
            ses = np.sqrt(sk).reshape(-1, k)
            cols = t.columns if k > 1 or t.kind == "slopes" else ["v"]
            frame = pd.DataFrame(vals, index=index, columns=cols)
            for j, c in enumerate(cols):
                frame[f"se:{c}"] = ses[:, j]
            out[t.name] = frame
        return out

    @property
    def varcomp(self) -> pd.DataFrame:
        """lme4's VarCorr table: grp, var1, var2, vcov, sdcor (variances and SDs; covariances
        and correlations; rho and tau of a CAR/SAR/AR(1) term; the residual variance)."""
        rows = []
        for k, t in enumerate(self.terms):
            nat = t.structure.natural(self._theta(k))
            if t.kind in ("intercept", "slopes"):
                S, cols = nat["cov"], t.columns
                for j, c in enumerate(cols):
                    rows.append((t.name, c, None, S[j, j], math.sqrt(S[j, j])))
                for j in range(len(cols)):
                    for i in range(j + 1, len(cols)):
                        rows.append((t.name, cols[j], cols[i], S[i, j], nat["corr"][i, j]))
            elif t.kind == "ar1":
                rows.append(
                    (t.name, "(Intercept)", None, nat["variance"], math.sqrt(nat["variance"]))
                )
                rows.append((t.name, "rho", None, math.nan, nat["rho"]))
            else:
                rows.append((t.name, "tau", None, nat["tau"], math.sqrt(nat["tau"])))
                if "rho" in nat:
                    rows.append((t.name, "rho", None, math.nan, nat["rho"]))
        if not self.fit.model.phi_fixed and self.phi is not None:
            rows.append(("Residual", None, None, self.phi, math.sqrt(self.phi)))
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])

    # ------------------------------------------------- variance parameters: SEs, profiles
    def _cov_x(self) -> np.ndarray:
        if self._x_cov is None:
            H = numeric_hessian(self.fit.criterion, self.fit.x_hat)
            try:
                self._x_cov = np.linalg.inv(-H)
            except np.linalg.LinAlgError:
                self._x_cov = np.full(H.shape, np.nan)
        return self._x_cov

    def _param_index(self) -> list[tuple[str, str, int]]:
        """(term, parameter, index in x) of every structure parameter."""
        out = []
        base = self.fit.n_beta_in_x
        for k, t in enumerate(self.terms):
            start = int(self.fit.model.theta_offsets[k])
            for j, nm in enumerate(t.structure.param_names):
                out.append((t.name, nm, base + start + j))
        return out

    @property
    def theta_table(self) -> pd.DataFrame:
        """The unconstrained parameters of the criterion with their SEs."""
        cov = self._cov_x()
        rows = []
        for term, nm, i in self._param_index():
            var = cov[i, i]
            rows.append((term, nm, self.fit.x_hat[i], math.sqrt(var) if var > 0 else math.nan))
        return pd.DataFrame(rows, columns=["term", "parameter", "estimate", "se"])

    @property
    def structure_params(self) -> pd.DataFrame:
        """rho, tau and AR(1) variances with SEs (delta method from the unconstrained scale)."""
        cov = self._cov_x()
        rows = []
        for k, t in enumerate(self.terms):
            if t.kind in ("intercept", "slopes"):
                continue
            th = self._theta(k)
            base = self.fit.n_beta_in_x + int(self.fit.model.theta_offsets[k])
            nat = t.structure.natural(th)
            for name, value in nat.items():
                grad = np.zeros(len(th))
                for j in range(len(th)):
                    e = np.zeros(len(th))
                    e[j] = 1e-6
                    up = t.structure.natural(th + e)[name]
                    dn = t.structure.natural(th - e)[name]
                    grad[j] = (up - dn) / 2e-6
                sub = cov[base : base + len(th), base : base + len(th)]
                var = float(grad @ sub @ grad)
                rows.append((t.name, name, value, math.sqrt(var) if var > 0 else math.nan))
        return pd.DataFrame(rows, columns=["term", "parameter", "estimate", "se"])

    def varcomp_ci(self, level: float = 0.95) -> pd.DataFrame:
        """Wald intervals of the variance components from the criterion's curvature: variances
        (and tau) on the log scale, correlations and AR(1) rho on Fisher's z (atanh) scale,
        CAR/SAR rho on the logit of its position in its admissible range (the scale the search
        runs on), mapped back. ``profile_ci`` gives profile-likelihood intervals."""
        cov = self._cov_x()
        z = stats.norm.ppf(0.5 + level / 2)
        rows = []
        for k, t in enumerate(self.terms):
            th = self._theta(k)
            base = self.fit.n_beta_in_x + int(self.fit.model.theta_offsets[k])
            sub = cov[base : base + len(th), base : base + len(th)]
            for key, (fwd, back) in _scales(t, th).items():
                value = fwd(th)
                grad = np.array(
                    [(fwd(th + e) - fwd(th - e)) / 2e-6 for e in np.eye(len(th)) * 1e-6]
                )
                se = math.sqrt(max(float(grad @ sub @ grad), 0.0))
                rows.append((t.name, *key, back(value), back(value - z * se), back(value + z * se)))
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "estimate", "lower", "upper"])

    def profile_ci(self, term: str, parameter: str, level: float = 0.95) -> tuple[float, float]:
        """Profile-likelihood interval of one parameter of a term's structure (``"rho"``,
        ``"tau"``, ``"variance"``; slopes: ``"log_L[i,j]"``/``"L[i,j]"`` on the theta scale),
        from the criterion the fit maximised (all other parameters re-maximised)."""
        k = next((i for i, t in enumerate(self.terms) if t.name == term), None)
        if k is None:
            raise ValueError(f"no random term {term!r}; terms: {[t.name for t in self.terms]}")
        t = self.terms[k]
        th0 = self._theta(k)
        base = self.fit.n_beta_in_x + int(self.fit.model.theta_offsets[k])
        names = list(t.structure.param_names)
        natural = t.structure.natural(th0)
        if parameter in names:
            j, to_value = names.index(parameter), None
        elif parameter in natural and np.ndim(natural[parameter]) == 0:
            # the natural parameter is a monotone function of one theta coordinate
            j = {"rho": 1, "tau": 0, "variance": 0}[parameter]
            to_value = parameter
        else:
            raise ValueError(
                f"{term} has no parameter {parameter!r}; it has {names} and {list(natural)}"
            )
        i = base + j
        crit, x_hat = self.fit.criterion, self.fit.x_hat
        f_hat = crit(x_hat)
        cut = 0.5 * stats.chi2.ppf(level, 1)
        se = math.sqrt(max(self._cov_x()[i, i], 1e-8)) if np.isfinite(self._cov_x()[i, i]) else 0.5
        others = np.array([m for m in range(len(x_hat)) if m != i])
        warm = {"x": x_hat[others].copy()}

        full_gradient = self.fit.criterion_gradient

        def profile(value: float) -> float:
            def place(z: np.ndarray) -> np.ndarray:
                x = x_hat.copy()
                x[i] = value
                x[others] = z
                return x

            def sub(z: np.ndarray) -> float:
                return crit(place(z))

            def sub_grad(z: np.ndarray) -> tuple[float, np.ndarray]:
                f, g = full_gradient(place(z))
                return f, g[others]

            res = maximise(
                sub, warm["x"], gtol=1e-5, value_and_gradient=sub_grad if full_gradient else None
            )
            warm["x"] = res.x
            return f_hat - (-res.fun) - cut

        ends = []
        for sign in (-1.0, 1.0):
            warm["x"] = x_hat[others].copy()
            step = 2.0 * se
            lo_t, hi_t = x_hat[i], x_hat[i] + sign * step
            found = False
            for _ in range(12):
                val = profile(hi_t)
                if val > 0:
                    found = True
                    break
                lo_t, hi_t = hi_t, hi_t + sign * step
                step *= 2
            if not found:
                ends.append(math.nan)
                continue
            warm["x"] = x_hat[others].copy()
            root = scipy.optimize.brentq(profile, min(lo_t, hi_t), max(lo_t, hi_t), xtol=1e-6)
            ends.append(root)
        out = []
        for end in ends:
            if to_value is None or not np.isfinite(end):
                out.append(end)
            else:
                th = th0.copy()
                th[j] = end
                out.append(float(t.structure.natural(th)[to_value]))
        return (min(out), max(out)) if all(np.isfinite(out)) else (out[0], out[1])

    # ------------------------------------------------------------- predict
    def predict(
        self,
        newdata: Any = None,
        type: str = "response",
        random: bool = True,
        se: bool = False,
        interval: str | None = None,
    ) -> np.ndarray:
        """Predictions on the link or response scale; new data: fixed part plus the known
        levels' effects (unknown levels: 0). Points only: ``se`` and ``interval`` are not
        available for structured random effects yet (a clear error says so)."""
        if se or interval is not None:
            raise ValueError(
                "prediction SEs and intervals are not available for random slopes and "
                "correlated random effects yet; predict() gives the points"
            )
        if type not in ("link", "response"):
            raise ValueError("type must be 'link' or 'response'")
        d = self.design
        mode = self.fit.evaluation.mode
        if newdata is None:
            eta = mode.eta if random else d.offset + d.X @ mode.beta
        else:
            eta = new_fixed_matrix(d.fixed_spec, newdata) @ mode.beta
            if random:
                frame = to_pandas(newdata)
                for t, vk in zip(self.terms, self.fit.model.split(mode.v), strict=True):
                    eta = eta + _new_level_effects(t, vk, frame)
        return eta if type == "link" else d.family.link.inverse(eta)

    # -------------------------------------------------------------- output
    def to_dict(self) -> dict[str, Any]:
        fx = self.fixef
        vc: dict[str, Any] = {}
        for k, t in enumerate(self.terms):
            nat = t.structure.natural(self._theta(k))
            entry: dict[str, Any] = {
                "kind": t.kind,
                "label": t.label,
                "n_levels": t.design.n_levels,
            }
            if t.kind in ("intercept", "slopes"):
                entry.update(
                    columns=list(t.columns),
                    variance=[_json(x) for x in nat["variance"]],
                    sd=[_json(x) for x in nat["sd"]],
                    cov=[[_json(x) for x in row] for row in nat["cov"]],
                    corr=[[_json(x) for x in row] for row in nat["corr"]],
                )
            else:
                entry.update({key: _json(val) for key, val in nat.items()})
            vc[t.name] = entry
        return {
            "method": self.method,
            "reml": self.reml,
            "family": str(self.design.family),
            "nobs": self.nobs,
            "fixef": {
                name: {"estimate": _json(r["estimate"]), "se": _json(r["se"])}
                for name, r in fx.iterrows()
            },
            "varcomp": vc,
            "phi": _json(self.phi) if self.phi is not None else None,
            "likelihood": {k: _json(v) for k, v in self.likelihood.items()},
            "converged": bool(self.converged),
            "n_iter": int(self.n_iter),
            "warnings": list(self.warnings),
            "timings": {k: _json(v) for k, v in self.timings.items()},
        }

    def summary(self) -> Summary:
        """Fixed effects, lme4's variance-component table, structure parameters, likelihoods."""
        out = ["Call:", f"hglm.fit({self.call})", ""]
        fx = self.fixef
        stat = "t" if "t" in fx.columns else "z"
        out += ["Fixed effects:", _coef_table(fx, stat, "p"), ""]
        out.append("Random effects:")
        vc = self.varcomp
        lines = [f"  {'Groups':<12} {'Name':<14} {'Variance':>12} {'Std.Dev.':>10} {'Corr':>8}"]
        for _, r in vc.iterrows():
            if not pd.isna(r["var2"]):
                continue
            if r["var1"] == "rho":
                lines.append(f"  {r['grp']:<12} {'rho':<14} {'':>12} {'':>10} {r['sdcor']:>8.3f}")
                continue
            corr = [
                f"{c['sdcor']:.3f}"
                for _, c in vc[(vc["grp"] == r["grp"]) & (vc["var2"] == r["var1"])].iterrows()
            ]
            lines.append(
                f"  {r['grp']:<12} {'' if pd.isna(r['var1']) else r['var1']:<14} {r['vcov']:>12.5g} {r['sdcor']:>10.5g} "
                + " ".join(f"{c:>8}" for c in corr)
            )
        out += lines
        out.append(
            f"Number of obs: {self.nobs}; groups: "
            + ", ".join(f"{t.name} {t.design.n_levels}" for t in self.terms)
        )
        sp_ = self.structure_params
        if len(sp_):
            out += ["", "Structure parameters (SE by the delta method):"]
            for _, r in sp_.iterrows():
                out.append(
                    f"  {r['term']:<12} {r['parameter']:<10} {r['estimate']:>12.5g} {r['se']:>10.4g}"
                )
        lik = self.likelihood
        out += [
            "",
            "Likelihoods:",
            f"  h = {lik['h']:.4f}   p_v(h) = {lik['p_v']:.4f}   "
            f"p_beta,v(h) = {lik['p_beta_v']:.4f}   cAIC = {lik['caic']:.4f}",
            "",
        ]
        crit = "REML (p_beta,v)" if self.reml else "ML (p_v)"
        status = "converged" if self.converged else "DID NOT CONVERGE"
        what = "EQL estimation" if self.method == "EQL" else f"{self.method} ({crit}) estimation"
        out.append(f"{what} {status} in {self.n_iter} iterations.")
        out += [f"Warning: {w}" for w in self.warnings]
        return Summary("\n".join(out))

    def __repr__(self) -> str:
        return f"<StructuredResult {self.method} {self.call}>"


def _scales(t: StructuredTerm, theta: np.ndarray) -> dict:
    """Per reported quantity of a term ((var1, var2) -> (theta -> transformed value, inverse
    transform)): the scales on which ``varcomp_ci`` builds its Wald intervals."""
    s = t.structure
    out: dict = {}
    if t.kind in ("intercept", "slopes"):
        for j, c in enumerate(t.columns):
            out[(c, None)] = (lambda th, j=j: math.log(s.natural(th)["cov"][j, j]), math.exp)
        for j in range(len(t.columns)):
            for i in range(j + 1, len(t.columns)):
                out[(t.columns[j], t.columns[i])] = (
                    lambda th, i=i, j=j: math.atanh(s.natural(th)["corr"][i, j]),
                    math.tanh,
                )
    elif t.kind == "ar1":
        out[("variance", None)] = (lambda th: float(th[0]), math.exp)
        out[("rho", None)] = (lambda th: float(th[1]), math.tanh)
    else:
        out[("tau", None)] = (lambda th: float(th[0]), math.exp)
        if len(theta) > 1:
            lo, hi = s.rho_lo, s.rho_hi  # type: ignore[attr-defined]
            out[("rho", None)] = (
                lambda th: float(th[1]),
                lambda x: lo + (hi - lo) / (1 + math.exp(-x)),
            )
    return out


def _new_level_effects(t: StructuredTerm, vk: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
    """Z_new v for one term on new rows: known levels (and times) only."""
    cols = list(t.design.term.factors)
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"newdata lacks grouping column(s) {missing} of {t.label}")
    keys = frame[cols].astype(str)
    labels = keys.agg(":".join, axis=1) if len(cols) > 1 else keys[cols[0]]
    codes = pd.Index(t.design.levels.astype(str)).get_indexer(labels.to_numpy())
    known = codes >= 0
    out = np.zeros(len(frame))
    if t.kind == "ar1":
        T = t.structure.T  # type: ignore[attr-defined]
        times = pd.Index([u.split(":", 1)[1] for u in t.unknowns[:T]])
        tcodes = times.get_indexer(frame[t.design.term.time].astype(str).to_numpy())
        ok = known & (tcodes >= 0)
        out[ok] = vk[codes[ok] * T + tcodes[ok]]
        return out
    if t.kind == "slopes":
        from hglm.design import fixed_matrix

        E, _, _ = fixed_matrix(t.design.term.effects_formula, frame, f"random effects of {t.label}")
        k = E.shape[1]
        V = vk.reshape(-1, k)
        out[known] = np.sum(E[known] * V[codes[known]], axis=1)
        return out
    out[known] = vk[codes[known]]
    return out
