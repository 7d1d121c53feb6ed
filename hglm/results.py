"""HGLMResult: tables, summary, prediction, residuals and a plain-JSON view of a fit."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from hglm.control import FitControl
from hglm.design import ModelDesign, evaluate_offset, new_fixed_matrix, new_term_codes, to_pandas
from hglm.diagnostics import Diagnostics
from hglm.dispersion_se import DispersionSE
from hglm.model import Model
from hglm.state import FitOutcome
from hglm.summary import QUASI_NOTE, Summary, format_summary


def _json(x: Any) -> Any:
    if isinstance(x, float | np.floating):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


@dataclass(frozen=True)
class RanefGivenFixef:
    """One random term's prediction distribution split by the fixed effects:
    v - v-hat = loading @ (beta - beta-hat) + e, e with SD ``se`` per level."""

    levels: pd.Index
    loading: np.ndarray  # (levels, p)
    se: np.ndarray  # (levels,)


@dataclass
class HGLMResult:
    """A fitted HGLM. Build it with ``hglm.fit``.

    The convenience methods (``simulate``, ``bootstrap``, ``profile_ci``, ``confint``,
    ``marginal_predict``) import the modules they delegate to when called: those modules sit
    above this one in the import graph and refer to this class for annotations only.
    """

    model: Model
    outcome: FitOutcome
    method: str
    reml: bool
    call: str
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    control: FitControl = field(default_factory=FitControl)

    def __post_init__(self) -> None:
        # the lazy dispersion SEs charge their Hessian to this fit's timings
        if isinstance(self.outcome.disp_se, DispersionSE):
            self.outcome.disp_se.record_timings_in(self.timings)

    # ------------------------------------------------------------------ basics
    @property
    def design(self) -> ModelDesign:
        """The model's design (``hglm.design.ModelDesign``): matrices, terms, response."""
        return self.model.design

    @property
    def converged(self) -> bool:
        """Whether the fit met its convergence criteria (``diagnostics.converged``)."""
        return self.outcome.converged

    @property
    def n_iter(self) -> int:
        """Iterations of the fit's main loop (``diagnostics.iterations``)."""
        return self.outcome.n_iter

    @property
    def nobs(self) -> int:
        """The number of data rows."""
        return self.design.n

    @property
    def n_omitted(self) -> int:
        """Rows left out for missing values (``na_action="omit"``); 0 otherwise."""
        return self.design.n_omitted

    @property
    def diagnostics(self) -> Diagnostics:
        """The fit's status: ``converged``, ``code``, ``iterations``, ``singular_terms``,
        ``messages`` (see ``hglm.diagnostics.Diagnostics``)."""
        return self.outcome.diagnostics

    @property
    def singular(self) -> list[str]:
        """The warning texts of the singular terms (``diagnostics.singular_terms``: their names)."""
        return [s.message for s in self.outcome.singular]

    @property
    def df_residual(self) -> int:
        """Residual degrees of freedom: rows less the sum of the data leverages."""
        return round(self.nobs - float(np.sum(self.leverages)))

    @property
    def _uses_t(self) -> bool:
        return not self.design.family.fixed_dispersion

    # ----------------------------------------------------------------- tables
    @property
    def fixef(self) -> pd.DataFrame:
        """The fixed effects: ``estimate``, ``se``, the t or z statistic and ``p``."""
        est = self.outcome.mean.beta
        se = np.sqrt(np.diag(self.outcome.cov_beta))
        stat = est / se
        if self._uses_t:
            p = 2 * stats.t.sf(np.abs(stat), max(self.df_residual, 1))
            stat_name, p_name = "t", "p"
        else:
            p = 2 * stats.norm.sf(np.abs(stat))
            stat_name, p_name = "z", "p"
        return pd.DataFrame(
            {"estimate": est, "se": se, stat_name: stat, p_name: p},
            index=pd.Index(self.design.fixed_names, name="term"),
        )

    @property
    def ranef(self) -> dict[str, pd.DataFrame]:
        """Per term: v (linear-predictor scale), u = u(v) and the prediction SE of v."""
        out = {}
        lev = self.outcome.leverages
        for t, v in zip(self.design.terms, self.outcome.mean.v, strict=True):
            out[t.name] = pd.DataFrame(
                {"v": v, "u": t.family.u(v), "se": np.sqrt(lev[f"var:{t.name}"])},
                index=pd.Index(t.levels, name=t.name),
            )
        return out

    def ranef_given_fixef(self) -> dict[str, RanefGivenFixef]:
        """How each random term's predictions depend on the fixed effects, on the v scale
        (observation-level terms, eliminated in closed form, are not included).

        With (beta, v) jointly normal around (beta-hat, v-hat) with covariance C^{-1}, the
        inverse of the augmented system's matrix, v - v-hat = L (beta - beta-hat) + e with
        L = -H^{-1} Z'AX and e independent of beta; ``se`` is the SD of e per level
        (diag H^{-1}). Drawing beta from N(beta-hat, cov_beta) and then e level by level gives
        the joint draws of a term's levels without their correlations given beta.

        Returns
        -------
        dict of str to RanefGivenFixef
            Per sparse random term: its levels, the loading on beta and the SD of e.
        """
        sol = self.outcome.mean.solution
        lev = self.outcome.leverages
        out: dict[str, RanefGivenFixef] = {}
        start = 0
        for t in self.model.sparse_terms:
            rows = -np.asarray(sol.M[start : start + t.n_levels])
            start += t.n_levels
            shared = np.einsum("ij,jk,ik->i", rows, sol.cov_beta, rows)
            given_beta = np.maximum(lev[f"var:{t.name}"] - shared, 0.0)
            out[t.name] = RanefGivenFixef(
                levels=pd.Index(t.levels, name=t.name), loading=rows, se=np.sqrt(given_beta)
            )
        return out

    @property
    def lambdas(self) -> pd.Series:
        """lambda per random term (the geometric mean over levels for a dispersion model),
        without the SEs that make ``varcomp`` compute the criterion's Hessian."""
        lam = self.outcome.disp.lam(self.design)
        return pd.Series(
            [float(np.exp(np.mean(np.log(lk)))) for lk in lam],
            index=pd.Index([t.name for t in self.design.terms], name="term"),
            name="lambda",
        )

    @property
    def varcomp(self) -> pd.DataFrame:
        """lambda per random term with its SE on the log scale (intercept-only terms). The SEs
        of HL fits come from a finite-difference Hessian, computed on first use (``lambdas``
        has the estimates alone)."""
        rows = []
        lam = self.outcome.disp.lam(self.design)
        for t, lk, dk in zip(self.design.terms, lam, self.outcome.disp.delta, strict=True):
            se = self.outcome.disp_se.get(t.name, np.full(len(dk), np.nan))
            rows.append(
                {
                    "term": t.name,
                    "family": str(t.family),
                    "n_levels": t.n_levels,
                    "lambda": float(lk[0]) if len(dk) == 1 else float(np.exp(np.mean(np.log(lk)))),
                    "log_lambda": float(dk[0]) if len(dk) == 1 else np.nan,
                    "se_log": float(se[0]) if len(dk) == 1 else np.nan,
                }
            )
        columns = ["term", "family", "n_levels", "lambda", "log_lambda", "se_log"]
        return pd.DataFrame(rows, columns=columns).set_index("term")

    @property
    def rand_disp(self) -> dict[str, pd.DataFrame]:
        """Coefficients of log lambda for terms with a dispersion model."""
        out = {}
        for t, dk in zip(self.design.terms, self.outcome.disp.delta, strict=True):
            se = self.outcome.disp_se.get(t.name, np.full(len(dk), np.nan))
            out[t.name] = pd.DataFrame(
                {"estimate": dk, "se": se}, index=pd.Index(t.disp_names, name="term")
            )
        return out

    @property
    def phi(self) -> float | None:
        """The dispersion of y | u when it is one number (1 for binomial/Poisson)."""
        if self.outcome.disp.phi_fixed:
            return 1.0
        if self.design.X_disp.shape[1] == 1:
            return float(np.exp(self.outcome.disp.gamma[0] * self.design.X_disp[0, 0]))
        return None

    @property
    def disp_coef(self) -> pd.DataFrame | None:
        """Coefficients of the dispersion model log phi = X_disp gamma, with SEs."""
        if self.outcome.disp.phi_fixed:
            return None
        se = self.outcome.disp_se.get("phi", np.full(len(self.outcome.disp.gamma), np.nan))
        return pd.DataFrame(
            {"estimate": self.outcome.disp.gamma, "se": se},
            index=pd.Index(self.design.disp_names, name="term"),
        )

    @property
    def phi_fitted(self) -> np.ndarray:
        """phi of each data row."""
        return self.outcome.disp.phi(self.design)

    @property
    def theta(self) -> pd.Series | None:
        """Negative binomial shape theta (variance mu + mu^2 / theta): estimate, SE (delta
        method), SE of log theta and the 95 % Wald interval from the log scale; None for
        other families. A theta given with the family (not estimated) has no SE."""
        fam = self.design.family
        if fam.name != "negative_binomial":
            return None
        est = self.outcome.theta
        se_log = est.se_log if est is not None else np.nan
        lo, hi = est.interval() if est is not None else (np.nan, np.nan)
        return pd.Series(
            {
                "estimate": float(fam.theta),  # type: ignore[arg-type]
                "se": float(fam.theta) * se_log,  # type: ignore[arg-type]
                "se_log": se_log,
                "lower": lo,
                "upper": hi,
            },
            name="theta",
        )

    @property
    def likelihood(self) -> dict[str, float]:
        """h, p_v(h), p_beta,v(h) and cAIC (keys ``h``, ``p_v``, ``p_beta_v``, ``caic``)."""
        return self.outcome.likelihood.as_dict()

    # ---------------------------------------------------------- diagnostics
    @property
    def fitted(self) -> np.ndarray:
        """mu on the response scale (a proportion for binomial)."""
        return self.outcome.mean.mu

    @property
    def leverages(self) -> np.ndarray:
        """The leverages of the data rows in the augmented GLM."""
        return self.outcome.leverages["data"]

    @property
    def deviance_components(self) -> np.ndarray:
        """The unit deviances of the data rows at the fitted means."""
        d = self.design
        return d.family.deviance(d.y, self.fitted, d.prior_weights)

    @property
    def deviance_residuals(self) -> np.ndarray:
        """Signed square roots of the deviance components."""
        return np.sign(self.design.y - self.fitted) * np.sqrt(
            np.maximum(self.deviance_components, 0)
        )

    @property
    def standardized_residuals(self) -> np.ndarray:
        """Deviance residuals / sqrt(phi (1 - q)) (R hglm's standardised residuals)."""
        q = np.minimum(self.leverages, 1 - 1e-8)
        return self.deviance_residuals / np.sqrt(self.phi_fitted * (1 - q))

    # ------------------------------------------------------------- predict
    def predict(
        self,
        newdata: Any = None,
        *,
        type: str = "response",
        random: bool = True,
        offset: Any = None,
        se: bool = False,
        interval: str | None = None,
        level: float = 0.95,
    ) -> Any:
        """Predictions on the link (``type="link"``) or response scale.

        With ``se=True`` or ``interval="confidence" | "prediction"`` the result is a
        DataFrame (``fit``, ``se`` on the link scale, ``lower``, ``upper``); what each
        interval covers, for seen and new levels, is set out in ``hglm.prediction``.
        Otherwise an array of the predictions.

        ``random=False`` leaves out every random term. Levels not seen in the fit, and any
        observation-level term on new data, get v(psi), the random effect's mean scale
        (0 for normal, beta and gamma random effects). The offset of new rows is rebuilt from
        the formula's ``offset(...)`` terms and a column-valued ``offset=`` of the fit.

        Parameters
        ----------
        newdata : pandas.DataFrame, optional
            Rows to predict for (default: the fitted data).
        type : str
            ``"response"`` or ``"link"``.
        random : bool
            Include the predicted random effects.
        offset : array-like, optional
            The new rows' offset, when the fit was given ``offset=`` as an array.
        se : bool
            Return a DataFrame with the link-scale standard errors.
        interval : str, optional
            ``"confidence"`` or ``"prediction"`` (see ``hglm.prediction``): adds ``lower``
            and ``upper`` on the ``type`` scale.
        level : float
            Coverage of the interval.

        Returns
        -------
        numpy.ndarray or pandas.DataFrame
            One prediction per row (a DataFrame with ``se``/``interval``).
        """
        if type not in ("link", "response"):
            raise ValueError("type must be 'link' or 'response'")
        if se or interval is not None:
            if not random:
                raise ValueError("intervals are for predictions with the random effects")
            from hglm.prediction import predict_with_uncertainty

            return predict_with_uncertainty(self, newdata, type, interval, level, offset)
        d = self.design
        if newdata is None:
            eta = self.outcome.mean.eta.copy()
            if not random:
                eta = d.offset + d.X @ self.outcome.mean.beta
        else:
            X = new_fixed_matrix(d.fixed_spec, newdata)
            eta = self._new_offset(newdata, offset) + X @ self.outcome.mean.beta
            n_new = len(eta)
            if random:
                for t, v in zip(d.terms, self.outcome.mean.v, strict=True):
                    if t.observation_level:
                        eta = eta + t.family.v_of_psi
                        continue
                    codes = new_term_codes(t, newdata)
                    vv = np.where(codes >= 0, v[np.maximum(codes, 0)], t.family.v_of_psi)
                    eta = eta + vv
            eta = eta + np.zeros(n_new)
        if type == "link":
            return eta
        return d.family.link.inverse(eta)

    def _new_offset(self, newdata: Any, offset: Any) -> np.ndarray:
        spec = self.design.offset_spec
        frame = to_pandas(newdata)
        if spec.argument_values and offset is None:
            raise ValueError(
                "the fit was given offset= as an array; pass the new rows' offset to predict() "
                "as offset= (or name a column in the fit: offset='log_t', or offset(...) in the "
                "formula)"
            )
        if offset is not None and not spec.argument_values:
            raise ValueError("offset= in predict() is only for a fit given offset= as an array")
        return evaluate_offset(spec, frame, offset)

    # -------------------------------------------------------------- output
    def to_dict(self) -> dict[str, Any]:
        """A plain-JSON view of the fit (non-finite numbers as None).

        Returns
        -------
        dict
            method, family, estimates with SEs, likelihoods, status, warnings and timings.
        """
        fx = self.fixef
        vc = self.varcomp
        out: dict[str, Any] = {
            "method": self.method,
            "reml": self.reml,
            "family": str(self.design.family),
            "nobs": self.nobs,
            "n_omitted": self.n_omitted,
            "fixef": {
                name: {"estimate": _json(r["estimate"]), "se": _json(r["se"])}
                for name, r in fx.iterrows()
            },
            "varcomp": {
                name: {
                    "lambda": _json(r["lambda"]),
                    "se_log": _json(r["se_log"]),
                    "family": r["family"],
                }
                for name, r in vc.iterrows()
            },
            "phi": _json(self.phi) if self.phi is not None else None,
            "theta": (
                {k: _json(v) for k, v in self.theta.items()} if self.theta is not None else None
            ),
            "likelihood": {k: _json(v) for k, v in self.likelihood.items()},
            "likelihood_note": QUASI_NOTE if self.design.family.quasi else None,
            "converged": bool(self.converged),
            "n_iter": int(self.n_iter),
            "warnings": list(self.warnings),
            "timings": {k: _json(v) for k, v in self.timings.items()},
        }
        dc = self.disp_coef
        if dc is not None and self.phi is None:
            out["disp"] = {
                name: {"estimate": _json(r["estimate"]), "se": _json(r["se"])}
                for name, r in dc.iterrows()
            }
        return out

    def summary(self) -> Summary:
        """A text summary laid out like R's ``summary.hglm`` (shown as text at the prompt).

        Returns
        -------
        Summary
            The text (a ``str``).
        """
        return Summary(format_summary(self))

    # ----------------------------------------------- inference (hglm.inference et al.)
    def simulate(
        self, n: int = 1, *, seed: Any = None, new_random_effects: bool = True
    ) -> np.ndarray:
        """Responses drawn from the fit (``hglm.simulate_responses``).

        Parameters
        ----------
        n : int
            Replicates.
        seed : int or numpy.random.Generator, optional
            The random source.
        new_random_effects : bool
            Draw new random effects (True) or keep the predicted ones.

        Returns
        -------
        numpy.ndarray
            (n, nobs) responses.
        """
        from hglm.simulate import simulate_responses

        return simulate_responses(self, n, seed=seed, new_random_effects=new_random_effects)

    def bootstrap(self, n: int = 200, *, func: Any = None, seed: Any = None, **kwargs: Any) -> Any:
        """Parametric bootstrap of ``func(fit)`` (``hglm.bootstrap``).

        Parameters
        ----------
        n : int
            Replicates.
        func : callable, optional
            The statistics of a fit (default: fixed effects, lambdas, phi).
        seed : int, optional
            Seed of the simulations.
        **kwargs
            ``new_random_effects``, ``progress`` (see ``hglm.bootstrap``).

        Returns
        -------
        BootstrapResult
            The replicates and their summaries.
        """
        from hglm.inference import bootstrap

        return bootstrap(self, n, func=func, seed=seed, **kwargs)

    def profile_ci(self, *, parm: list[str] | None = None, level: float = 0.95) -> pd.DataFrame:
        """Profile-likelihood intervals of lambda and phi (``hglm.profile_ci``).

        Parameters
        ----------
        parm : list of str, optional
            The parameters to profile (default: all).
        level : float
            The confidence level.

        Returns
        -------
        pandas.DataFrame
            One row per parameter.
        """
        from hglm.inference import profile_ci

        return profile_ci(self, parm=parm, level=level)

    def confint(self, *, level: float = 0.95, dispersion: str = "profile") -> pd.DataFrame:
        """Intervals for all parameters (``hglm.confint``).

        Parameters
        ----------
        level : float
            The confidence level.
        dispersion : str
            ``"profile"`` or ``"wald"`` for the dispersion parameters.

        Returns
        -------
        pandas.DataFrame
            ``estimate``, ``lower``, ``upper``, ``method`` per parameter.
        """
        from hglm.inference import confint

        return confint(self, level=level, dispersion=dispersion)

    def marginal_predict(self, newdata: Any = None, **kwargs: Any) -> np.ndarray:
        """Population-averaged E(y) (``hglm.marginal_predict``).

        Parameters
        ----------
        newdata : pandas.DataFrame, optional
            Rows to predict for (default: the fitted data).
        **kwargs
            ``average_over``, ``method``, ``n_quad``, ``offset`` (see ``hglm.marginal_predict``).

        Returns
        -------
        numpy.ndarray
            E(y) per row.
        """
        from hglm.marginal import marginal_predict

        return marginal_predict(self, newdata, **kwargs)

    def __repr__(self) -> str:
        return f"<HGLMResult {self.method} {self.call}>"
