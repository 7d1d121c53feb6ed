"""Response families (y | u) and random-effect families (u) of an HGLM.

Every function is vectorised over observations (response families) or over
random-effect levels (random-effect families). Names follow the issue:
``"binomial(probit)"``, ``"inverse_gamma(log)"``; a bare name takes the
canonical / customary link.

Two views of a random-effect family are needed:

* the *augmented-GLM* view used by R hglm's EQL algorithm: a quasi response
  ``psi`` with variance function ``V_M(u)`` and IWLS weight
  ``(du/dv)^2 / V_M(u) / lambda``, plus the deviance ``d_M`` of ``psi`` at ``u``
  that feeds lambda's gamma GLM;
* the *exact* view used by the h-likelihood: the log-density of ``v`` (the
  density of ``u`` times ``|du/dv|``), its score and its negative Hessian.

For normal, beta(logit), gamma(log) and inverse-gamma(reciprocal) the two
agree (conjugate, canonical scale). For inverse-gamma with a log link they
differ: u ~ IG(1 + 1/lambda, 1/lambda) (E u = 1) has log-density in v = log u
with an extra -v that R hglm's quasi-likelihood rows ignore; EQL follows hglm,
the HL methods use the exact density.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

_EPS = 1e-10


# --------------------------------------------------------------------------- links


@dataclass(frozen=True)
class Link:
    name: str

    def fun(self, mu: np.ndarray) -> np.ndarray:
        n = self.name
        if n == "identity":
            return np.asarray(mu, dtype=float)
        if n == "log":
            return np.log(mu)
        if n == "logit":
            return special.logit(mu)
        if n == "probit":
            return special.ndtri(mu)
        if n == "cloglog":
            return np.log(-np.log1p(-mu))
        if n in ("inverse", "reciprocal"):
            return 1.0 / mu
        raise ValueError(f"unknown link {n!r}")

    def inverse(self, eta: np.ndarray) -> np.ndarray:
        n = self.name
        if n == "identity":
            return np.asarray(eta, dtype=float)
        if n == "log":
            return np.exp(np.clip(eta, -700, 700))
        if n == "logit":
            return np.clip(special.expit(eta), _EPS, 1 - _EPS)
        if n == "probit":
            return np.clip(special.ndtr(eta), _EPS, 1 - _EPS)
        if n == "cloglog":
            return np.clip(-np.expm1(-np.exp(np.clip(eta, -700, 30))), _EPS, 1 - _EPS)
        if n in ("inverse", "reciprocal"):
            return 1.0 / eta
        raise ValueError(f"unknown link {n!r}")

    def mu_eta(self, eta: np.ndarray) -> np.ndarray:
        """d mu / d eta."""
        n = self.name
        if n == "identity":
            return np.ones_like(np.asarray(eta, dtype=float))
        if n == "log":
            return np.maximum(np.exp(np.clip(eta, -700, 700)), np.finfo(float).tiny)
        if n == "logit":
            p = special.expit(eta)
            return np.maximum(p * (1 - p), np.finfo(float).tiny)
        if n == "probit":
            return np.maximum(stats.norm.pdf(eta), np.finfo(float).tiny)
        if n == "cloglog":
            e = np.clip(eta, -700, 30)
            return np.maximum(np.exp(e - np.exp(e)), np.finfo(float).tiny)
        if n in ("inverse", "reciprocal"):
            return -1.0 / eta**2
        raise ValueError(f"unknown link {n!r}")


def _split_name(spec: str) -> tuple[str, str | None]:
    m = re.fullmatch(r"\s*([A-Za-z_.][A-Za-z_.0-9]*)\s*(?:\(\s*([A-Za-z_./0-9\-]*)\s*\))?\s*", spec)
    if not m:
        raise ValueError(f"cannot read family {spec!r}; expected e.g. 'binomial(probit)'")
    name = m.group(1).lower().replace(".", "_")
    link = m.group(2) or None
    return name, (link.lower() if link else None)


# ------------------------------------------------------------------ response families


def _strictly_inside(mu: np.ndarray, upper: float) -> bool:
    """0 < mu < upper everywhere (then x log(mu) needs no 0 log 0 = 0 convention)."""
    mu = np.asarray(mu)
    return bool(mu.size) and float(mu.min()) > 0.0 and float(mu.max()) < upper


_RESPONSE_LINKS = {
    "gaussian": ("identity", ("identity", "log")),
    "binomial": ("logit", ("logit", "probit", "cloglog")),
    "poisson": ("log", ("log",)),
    "gamma": ("log", ("log", "inverse")),
    "negative_binomial": ("log", ("log",)),
}
_RESPONSE_ALIASES = {
    "normal": "gaussian",
    "gamma": "gamma",
    "gauss": "gaussian",
    "nbinom2": "negative_binomial",
    "negbin": "negative_binomial",
    "nb2": "negative_binomial",
    "negativebinomial": "negative_binomial",
}
# quasi-likelihood families: phi estimated (R hglm's binomial/poisson without fix.disp)
_QUASI = {"quasipoisson": "poisson", "quasibinomial": "binomial"}
_CANONICAL = {"gaussian": "identity", "binomial": "logit", "poisson": "log", "gamma": "inverse"}
COUNT_FAMILIES = ("binomial", "poisson", "negative_binomial")


@dataclass(frozen=True)
class ResponseFamily:
    """Distribution of y | u. ``w`` below is the prior weight (for binomial: the
    number of trials, with y the observed proportion).

    ``negative_binomial`` is NB2: variance mu + mu^2 / theta, with the exact NB
    log-likelihood (not a Poisson with an observation-level gamma term). ``theta`` is the
    shape; the family object holds one value. The fit estimates it (by profiling, see
    ``hglm.negbin``; the family then holds theta-hat) unless ``theta_fixed``: a value the
    user gave, ``negative_binomial_family(theta)``. ``quasi``: a binomial or Poisson family whose dispersion phi is
    estimated (quasi-likelihood, as R hglm without ``fix.disp``); it has no likelihood."""

    name: str
    link: Link
    theta: float | None = None
    quasi: bool = False
    theta_fixed: bool = False

    @property
    def fixed_dispersion(self) -> bool:
        """phi fixed at 1 (NB's theta is a shape of the variance function, not a phi)."""
        return self.name in COUNT_FAMILIES and not self.quasi

    @property
    def canonical(self) -> bool:
        return _CANONICAL.get(self.name) == self.link.name

    @property
    def has_likelihood(self) -> bool:
        return not self.quasi

    @property
    def estimates_theta(self) -> bool:
        """A negative binomial whose theta the fit estimates."""
        return self.name == "negative_binomial" and not self.theta_fixed

    def with_theta(self, theta: float, fixed: bool | None = None) -> ResponseFamily:
        """The family at another theta (``fixed``: whether a fit keeps it; default unchanged)."""
        keep = self.theta_fixed if fixed is None else fixed
        return ResponseFamily(self.name, self.link, float(theta), self.quasi, keep)

    def _theta(self) -> float:
        if self.theta is None:
            raise ValueError("the negative binomial family needs theta (estimated by the fit)")
        return self.theta

    def variance(self, mu: np.ndarray) -> np.ndarray:
        if self.name == "gaussian":
            return np.ones_like(mu)
        if self.name == "binomial":
            return mu * (1 - mu)
        if self.name == "poisson":
            return mu
        if self.name == "negative_binomial":
            return mu + mu**2 / self._theta()
        return mu**2

    def valid_mu(self, mu: np.ndarray) -> np.ndarray:
        if self.name == "binomial":
            return np.clip(mu, _EPS, 1 - _EPS)
        if self.name in ("poisson", "gamma", "negative_binomial"):
            return np.maximum(mu, 1e-300)
        return mu

    def deviance(self, y: np.ndarray, mu: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Unit deviances times prior weights (R's ``dev.resids``)."""
        if self.name == "gaussian":
            return w * (y - mu) ** 2
        if self.name == "binomial":
            return 2 * w * (special.xlogy(y, y / mu) + special.xlogy(1 - y, (1 - y) / (1 - mu)))
        if self.name == "poisson":
            return 2 * w * (special.xlogy(y, y / mu) - (y - mu))
        if self.name == "negative_binomial":
            th = self._theta()
            return 2 * w * (special.xlogy(y, y / mu) - (y + th) * np.log((y + th) / (mu + th)))
        return -2 * w * (np.log(y / mu) - (y - mu) / mu)

    def loglik(self, y: np.ndarray, mu: np.ndarray, phi: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Exact log f(y | u) per observation (phi: dispersion, w: prior weights)."""
        return self.loglik_kernel(y, mu, phi, w) + self.log_normaliser(y, w)

    def log_normaliser(self, y: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The part of log f(y | u) free of mu and phi (binomial coefficient, -log y!, -log y):
        the same at every IWLS step, so fits compute it once (``hglm.likelihood``)."""
        if self.name == "binomial":
            k = np.rint(y * w)
            return special.gammaln(w + 1) - special.gammaln(k + 1) - special.gammaln(w - k + 1)
        if self.name == "poisson":
            return -special.gammaln(y + 1)
        if self.name == "negative_binomial":  # theta-free part only (the cache keys on y, w)
            return -w * special.gammaln(y + 1)
        if self.name == "gamma":
            return -np.log(y)
        return np.zeros(np.shape(y))

    def loglik_kernel(
        self, y: np.ndarray, mu: np.ndarray, phi: np.ndarray, w: np.ndarray
    ) -> np.ndarray:
        """log f(y | u) less ``log_normaliser``."""
        if self.name == "gaussian":
            s2 = phi / w
            return -0.5 * (np.log(2 * np.pi * s2) + (y - mu) ** 2 / s2)
        inside = _strictly_inside(mu, 1.0 if self.name == "binomial" else np.inf)
        if self.name == "binomial":
            k = np.rint(y * w)
            if inside:  # x log(m) as xlogy gives it, without the special function's cost
                return k * np.log(mu) + (w - k) * np.log(1 - mu)
            return special.xlogy(k, mu) + special.xlogy(w - k, 1 - mu)
        if self.name == "poisson":
            return (y * np.log(mu) if inside else special.xlogy(y, mu)) - mu
        if self.name == "negative_binomial":
            # log Gamma(y + th) - log Gamma(th) + th log(th / (th + mu)) + y log(mu / (th + mu))
            th = self._theta()
            log_total = np.log(th + mu)
            return w * (
                special.gammaln(y + th)
                - special.gammaln(th)
                + th * (np.log(th) - log_total)
                + special.xlogy(y, mu)
                - y * log_total
            )
        shape = w / phi
        return shape * np.log(shape * y / mu) - shape * y / mu - special.gammaln(shape)

    def working_weight(self, eta: np.ndarray, mu: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Expected (Fisher) IWLS weight w (dmu/deta)^2 / V(mu), before dividing by phi."""
        d = self.link.mu_eta(eta)
        return w * d**2 / self.variance(mu)

    def observed_weight(
        self, y: np.ndarray, eta: np.ndarray, mu: np.ndarray, w: np.ndarray
    ) -> np.ndarray:
        """-d2 log f / d eta2 times phi: the observed information on the eta scale.

        Equals the expected weight for canonical links; otherwise it carries
        the extra term -(y - mu) d/deta[mu'(eta)/V(mu)].
        """
        if self.name == "negative_binomial" and self.link.name == "log":
            th = self._theta()
            return w * th * mu * (th + y) / (mu + th) ** 2
        expected = self.working_weight(eta, mu, w)
        if self.canonical:
            return expected
        h = 1e-5 * np.maximum(1.0, np.abs(eta))

        def g(e: np.ndarray) -> np.ndarray:
            m = self.valid_mu(self.link.inverse(e))
            return self.link.mu_eta(e) / self.variance(m)

        dg = (g(eta + h) - g(eta - h)) / (2 * h)
        return expected - w * (y - mu) * dg

    def __str__(self) -> str:
        prefix = "quasi" if self.quasi else ""
        return f"{prefix}{self.name}({self.link.name})"


def response_family(spec: str | ResponseFamily, link: str | None = None) -> ResponseFamily:
    """Parse a response family such as ``"binomial(probit)"``.

    Parameters
    ----------
    spec : str or ResponseFamily
        ``"gaussian"``, ``"binomial"``, ``"poisson"`` or ``"gamma"``, optionally with a link.
    link : str, optional
        Overrides the link given in ``spec``.

    Returns
    -------
    ResponseFamily
        The family with its link.
    """
    if isinstance(spec, ResponseFamily):
        if link is None:
            return spec
        return ResponseFamily(spec.name, Link(link), spec.theta, spec.quasi, spec.theta_fixed)
    name, lk = _split_name(spec)
    name = _RESPONSE_ALIASES.get(name, name)
    quasi = name in _QUASI
    name = _QUASI.get(name, name)
    if name not in _RESPONSE_LINKS:
        raise ValueError(
            f"unknown response family {spec!r}; choose one of {sorted(_RESPONSE_LINKS)}"
        )
    default, allowed = _RESPONSE_LINKS[name]
    lk = link.lower() if link else (lk or default)
    if lk == "reciprocal":
        lk = "inverse"
    if lk not in allowed:
        raise ValueError(f"link {lk!r} is not available for {name}; choose one of {allowed}")
    return ResponseFamily(name, Link(lk), quasi=quasi)


def quasi_family(family: ResponseFamily) -> ResponseFamily:
    """The binomial or Poisson family with phi estimated (quasi-likelihood)."""
    if family.name not in ("binomial", "poisson"):
        raise ValueError(f"a quasi-likelihood phi is for binomial and poisson, not {family.name}")
    return ResponseFamily(family.name, family.link, family.theta, True, family.theta_fixed)


def negative_binomial_family(theta: float) -> ResponseFamily:
    """NB2 (log link) with theta known: a fit keeps it instead of estimating it.

    Parameters
    ----------
    theta : float
        The NB2 shape (variance mu + mu^2 / theta); must be positive.

    Returns
    -------
    ResponseFamily
        The negative binomial family with theta fixed, for ``hglm.fit(..., family=...)``.
    """
    if not theta > 0:
        raise ValueError(f"theta must be positive, got {theta}")
    return ResponseFamily("negative_binomial", Link("log"), float(theta), theta_fixed=True)


# ----------------------------------------------------------- random-effect families

_RANDOM_LINKS = {
    "normal": ("identity", ("identity",)),
    "beta": ("logit", ("logit",)),
    "gamma": ("log", ("log",)),
    "inverse_gamma": ("reciprocal", ("reciprocal", "log")),
}
_RANDOM_ALIASES = {"gaussian": "normal", "inversegamma": "inverse_gamma", "ig": "inverse_gamma"}


@dataclass(frozen=True)
class RandomFamily:
    """Distribution of u and the scale v = v(u) on which it enters eta."""

    name: str
    link: Link

    @property
    def psi(self) -> float:
        """E(u): the quasi response of the augmented GLM."""
        return {"normal": 0.0, "beta": 0.5, "gamma": 1.0, "inverse_gamma": 1.0}[self.name]

    @property
    def v_of_psi(self) -> float:
        return float(self.link.fun(np.array(self.psi))) if self.name != "normal" else 0.0

    def u(self, v: np.ndarray) -> np.ndarray:
        if self.name == "inverse_gamma" and self.link.name == "reciprocal":
            return 1.0 / v
        return self.link.inverse(v)

    def du_dv(self, v: np.ndarray) -> np.ndarray:
        if self.name == "inverse_gamma" and self.link.name == "reciprocal":
            return -1.0 / v**2
        return self.link.mu_eta(v)

    def variance(self, u: np.ndarray) -> np.ndarray:
        if self.name == "normal":
            return np.ones_like(u)
        if self.name == "beta":
            return u * (1 - u)
        if self.name == "gamma":
            return u
        return u**2

    def deviance(self, u: np.ndarray) -> np.ndarray:
        """Quasi deviance of psi at u (R hglm's ``rand.family$dev.resids(psi, u, 1)``)."""
        if self.name == "normal":
            return u**2
        if self.name == "beta":
            return np.log(0.25 / (u * (1 - u)))
        if self.name == "gamma":
            return 2 * (u - 1 - np.log(u))
        return 2 * (np.log(u) + 1 / u - 1)

    # -- augmented GLM rows (R hglm) ------------------------------------------------
    def quasi_rows(self, v: np.ndarray, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """IWLS weight and working response of the quasi observations psi."""
        u = self.u(v)
        d = self.du_dv(v)
        weight = d**2 / self.variance(u) / lam
        z = v + (self.psi - u) / d
        return weight, z

    # -- exact density of v -----------------------------------------------------------
    def logdensity(self, v: np.ndarray, lam: np.ndarray) -> np.ndarray:
        """log f(v; lambda) = log f_u(u(v)) + log |du/dv| per level."""
        if self.name == "normal":
            return -0.5 * (np.log(2 * np.pi * lam) + v**2 / lam)
        if self.name == "beta":
            a = 1 / (2 * lam)
            u = self.u(v)
            return a * (np.log(u) + np.log1p(-u)) - _once_if_constant(
                lambda x: special.betaln(x, x), a
            )
        if self.name == "gamma":
            a = 1 / lam
            return a * (v - np.exp(v)) + _once_if_constant(
                lambda x: x * np.log(x) - special.gammaln(x), a
            )
        a = 1 / lam
        norm = _once_if_constant(lambda x: (1 + x) * np.log(x) - special.gammaln(1 + x), a)
        if self.link.name == "log":
            return norm - (a + 1) * v - a * np.exp(-v)
        return norm + a * np.log(v) - a * v

    def quasi_logdensity(self, v: np.ndarray, lam: np.ndarray) -> np.ndarray:
        """The kernel the quasi rows maximise (equals ``logdensity`` except IG with log link)."""
        if self.name == "inverse_gamma" and self.link.name == "log":
            a = 1 / lam
            return -a * (np.exp(-v) + v)
        return self.logdensity(v, lam)

    def exact_rows(self, v: np.ndarray, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Newton weight (-d2/dv2 log f) and working response v + score / weight."""
        if self.name == "inverse_gamma" and self.link.name == "log":
            a = 1 / lam
            weight = a * np.exp(-v)
            score = -(a + 1) + a * np.exp(-v)
            return weight, v + score / weight
        return self.quasi_rows(v, lam)

    def sample_u(self, lam: float, size: int, rng: np.random.Generator) -> np.ndarray:
        """Draw u (used by simulations)."""
        if self.name == "normal":
            return rng.normal(0.0, np.sqrt(lam), size)
        if self.name == "beta":
            return rng.beta(1 / (2 * lam), 1 / (2 * lam), size)
        if self.name == "gamma":
            return rng.gamma(1 / lam, lam, size)
        return 1 / rng.gamma(1 + 1 / lam, lam, size)

    def __str__(self) -> str:
        return f"{self.name}({self.link.name})"


def random_family(spec: str | RandomFamily) -> RandomFamily:
    """Parse a random-effect family such as ``"gamma(log)"``.

    Parameters
    ----------
    spec : str or RandomFamily
        ``"normal"``, ``"beta"``, ``"gamma"`` or ``"inverse_gamma"``, optionally with a link.

    Returns
    -------
    RandomFamily
        The family with its link.
    """
    if isinstance(spec, RandomFamily):
        return spec
    name, lk = _split_name(spec)
    name = _RANDOM_ALIASES.get(name, name)
    if name not in _RANDOM_LINKS:
        raise ValueError(
            f"unknown random-effect family {spec!r}; choose one of {sorted(_RANDOM_LINKS)}"
        )
    default, allowed = _RANDOM_LINKS[name]
    lk = lk or default
    if lk == "inverse":
        lk = "reciprocal"
    if lk not in allowed:
        raise ValueError(f"link {lk!r} is not available for random {name}; choose one of {allowed}")
    return RandomFamily(name, Link(lk))


def _once_if_constant(fn, a: np.ndarray) -> np.ndarray | float:
    """fn(a) elementwise, evaluated once when every element of a is the same.

    A term's lambda is usually one number for all its levels; the log-gamma functions of the
    conjugate densities then cost one call instead of one per level (per wafer for the
    over-dispersion term, on every criterion evaluation)."""
    a = np.asarray(a, dtype=float)
    if a.size > 1 and a.min() == a.max():
        return float(fn(a.flat[0]))
    return fn(a)
