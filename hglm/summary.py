"""The printed summary of a fit, laid out like R's ``summary.hglm`` (``HGLMResult.summary``).

May import: nothing of ``hglm`` at run time (``hglm.results`` for annotations).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from hglm.results import HGLMResult

QUASI_NOTE = (
    "phi is a quasi-likelihood dispersion (binomial/poisson with disp=), so h, p_v(h), "
    "p_beta,v(h) and cAIC are not defined (R hglm reports none either)"
)


class Summary(str):
    """The printed summary of a fit: a string that shows as its text at an interactive prompt."""

    def __repr__(self) -> str:
        return str(self)


def _stars(p: float) -> str:
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "." if p < 0.1 else ""


def _coef_table(df: pd.DataFrame, stat: str | None, pcol: str | None) -> str:
    lines = []
    width = max([len(str(i)) for i in df.index] + [4])
    head = f"{'':{width}} {'Estimate':>10} {'Std. Error':>10}"
    if stat:
        head += f" {stat + '-value':>9} {'Pr(>|' + stat + '|)':>10}"
    lines.append(head)
    for name, r in df.iterrows():
        line = f"{name!s:{width}} {r['estimate']:>10.5f} {r['se']:>10.5f}"
        if stat and pcol:
            p = r[pcol]
            ptxt = "< 2e-16" if p < 2e-16 else f"{p:.3g}"
            line += f" {r[stat]:>9.3f} {ptxt:>10} {_stars(p)}"
        lines.append(line)
    return "\n".join(lines)


def format_summary(res: HGLMResult) -> str:
    """The text of ``res.summary()``, laid out like R's ``summary.hglm``."""
    out = ["Call:", f"hglm.fit({res.call})", ""]
    out += ["----------", "MEAN MODEL", "----------", ""]
    if res.n_omitted:
        out.append(
            f"{res.n_omitted} row(s) with missing values omitted; {res.nobs} used "
            '(na_action="omit")'
        )
        out.append("")
    out.append("Summary of the fixed effects estimates:")
    out.append("")
    fx = res.fixef
    stat = "t" if "t" in fx.columns else "z"
    out.append(_coef_table(fx, stat, "p"))
    out.append("---")
    out.append("Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1")
    if stat == "t":
        out.append(f"Note: P-values are based on {res.df_residual} degrees of freedom")
    out.append("")
    for name, tab in res.ranef.items():
        out.append(f"Summary of the random effects estimates ({name}, {len(tab)} levels):")
        shown = tab.head(6)
        out.append(
            "\n".join(
                f"  {lvl!s:>12} {r['u']:>10.4f} (v = {r['v']:.4f}, se {r['se']:.4f})"
                for lvl, r in shown.iterrows()
            )
        )
        if len(tab) > 6:
            out.append(f"  ... ({len(tab) - 6} more)")
        out.append("")
    out += ["----------------", "DISPERSION MODEL", "----------------", ""]
    if res.method == "EQL":
        out.append("NOTE: h-likelihood estimates through EQL can be biased.")
        out.append("")
    theta = res.theta
    if theta is not None:
        out.append("Negative binomial (NB2) shape theta, variance mu + mu^2/theta:")
        out.append(
            f"  theta = {theta['estimate']:.6g} (SE {theta['se']:.4g}; log theta SE "
            f"{theta['se_log']:.4g}; 95% CI {theta['lower']:.4g} to {theta['upper']:.4g})"
        )
        out.append("")
    if res.design.family.fixed_dispersion:
        out.append("Dispersion parameter for the mean model: fixed at 1")
    else:
        phi = res.phi
        if phi is not None:
            out.append("Dispersion parameter for the mean model:")
            out.append(f"[1] {phi:.6g}")
            out.append("")
        out.append("Model estimates for the dispersion term:")
        out.append("")
        out.append("Link = log")
        out.append("")
        out.append("Effects:")
        out.append(_coef_table(res.disp_coef, None, None))  # type: ignore[arg-type]
        out.append("")
    vc = res.varcomp
    if len(vc):  # a GLM (no random terms) has none of this
        out.append("Dispersion parameter for the random effects:")
        out.append("[1] " + " ".join(f"{x:.6g}" for x in vc["lambda"]))
        out.append("")
        out.append("Dispersion model for the random effects:")
        out.append("")
        out.append("Link = log")
        out.append("")
        out.append("Effects:")
        for name, tab in res.rand_disp.items():
            fam = vc.loc[name, "family"]
            out.append(f".|{name} ({fam})")
            out.append(_coef_table(tab, None, None))
        out.append("")
    lik = res.likelihood
    out.append("Likelihoods:")
    if res.design.family.quasi:
        out.append(f"  not available: {QUASI_NOTE}")
    else:
        out.append(
            f"  h = {lik['h']:.4f}   p_v(h) = {lik['p_v']:.4f}   "
            f"p_beta,v(h) = {lik['p_beta_v']:.4f}   cAIC = {lik['caic']:.4f}"
        )
    out.append("")
    crit = "REML (p_beta,v)" if res.reml else "ML (p_v)"
    status = "converged" if res.converged else "DID NOT CONVERGE"
    what = "EQL estimation" if res.method == "EQL" else f"{res.method} ({crit}) estimation"
    profiled = (
        f" (NB theta by profiling: {res.outcome.theta.evaluations} fits; the last one's iterations)"
        if res.outcome.theta is not None
        else ""
    )
    out.append(f"{what} {status} in {res.n_iter} iterations{profiled}.")
    for w in res.warnings:
        out.append(f"Warning: {w}")
    return "\n".join(out)
