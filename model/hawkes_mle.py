"""The two references an event model is judged beside: the oracle and a classical maximum-likelihood fit.

* **Oracle**: the exact log-likelihood of a sequence under its true exponential-kernel Hawkes
  parameters (``model.data.hawkes`` has the model and its conventions), by the classical O(N M)
  recursion: with ``R_m`` the decayed count of past mark-m events,

      lambda_k(t_i) = mu_k + beta sum_m alpha[k, m] R_m(t_i),   R(t_i) = exp(-beta dt_i) (R(t_{i-1}) + e_{k_{i-1}}),

  and the compensator of each gap in closed form. Event i's term is its conditional log-density
  given the events before it: ``log lambda_{k_i}(t_i) - int_{t_{i-1}}^{t_i} sum_k lambda_k``, so
  per-event figures line up with a model that scores each event against the state before it.
  This is the Bayes limit no model of the prior can beat on average. Its forecast of the next
  event (``next_event_forecasts``: the expected waiting time and the probability of each mark)
  is exact too: between events the intensity is ``mu + e exp(-beta s)``, whose survival
  integrals are confluent hypergeometric functions (closed form, no simulation).
* **Classical fit**: what a practitioner does per sequence (what ``tick``'s ``HawkesExpKern``
  would do, were its learners working): maximise the same likelihood over mu, alpha and beta with
  scipy's SLSQP, subject to stationarity (spectral radius of alpha <= ``MAX_RADIUS``, with the
  Perron root's gradient), from a few starting points. Its objective is a second, vectorised
  implementation (torch float64, ``logcumsumexp`` in place of the recursion, autograd gradients),
  so the tests check the two against each other and against a brute-force O(N^2) sum.

It lives in ``model/`` beside ``gp_oracle.py`` because ``model.evaluate`` puts both figures next to
the model's on the same sequences; ``bench/baselines`` holds speed baselines, not likelihoods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import hyp1f1
from torch import Tensor

from model.data.events import EventBatch
from model.data.hawkes import HawkesParams

MAX_RADIUS = 0.999  # stationarity with a margin: at radius 1 the compensator stops bounding the count
_NO_EVENT = -1e30  # a finite "log 0" for logcumsumexp: -inf would make its gradient NaN


# ---- oracle ----------------------------------------------------------------------------------------
def _recursion(
    params: HawkesParams, times: Tensor | np.ndarray, marks: Tensor | np.ndarray, end: float | None
) -> tuple[np.ndarray, np.ndarray, float]:
    """log lambda_{k_i}(t_i) [n], the compensator of each gap int_{t_{i-1}}^{t_i} sum_k lambda_k [n]
    (t_{-1} = 0), and that of the window's quiet end (0 when ``end`` is None)."""
    mu, alpha = params.mu[0].double().numpy(), params.alpha[0].double().numpy()
    beta = float(params.beta[0])
    t = np.asarray(times, dtype=np.float64)
    k = np.asarray(marks, dtype=np.int64)
    mu_total, children = mu.sum(), alpha.sum(0)  # children[m]: expected children of a mark-m event
    decayed = np.zeros(len(mu))  # R: sum over past events of mark m of exp(-beta (now - t_j))
    log_intensity, compensator = np.empty(len(t)), np.empty(len(t))
    previous = 0.0
    for i in range(len(t)):
        dt = t[i] - previous
        decay = math.exp(-beta * dt)
        compensator[i] = mu_total * dt + children @ decayed * (1.0 - decay)
        decayed *= decay
        log_intensity[i] = math.log(mu[k[i]] + beta * alpha[k[i]] @ decayed)
        decayed[k[i]] += 1.0
        previous = t[i]
    tail = 0.0
    if end is not None:
        tail = mu_total * (end - previous) + children @ decayed * (1.0 - math.exp(-beta * (end - previous)))
    return log_intensity, compensator, float(tail)


def event_log_likelihoods(
    params: HawkesParams, times: Tensor | np.ndarray, marks: Tensor | np.ndarray, end: float | None = None
) -> tuple[np.ndarray, float]:
    """Per-event conditional log-likelihoods [n] of one sequence on [0, ...], and the survival term
    of the window (-int_{t_n}^{end} sum_k lambda_k; 0 when ``end`` is None). ``params``: batch of one."""
    log_intensity, compensator, tail = _recursion(params, times, marks, end)
    return log_intensity - compensator, -tail


def compensator_increments(params: HawkesParams, times: Tensor | np.ndarray, marks: Tensor | np.ndarray) -> np.ndarray:
    """int_{t_{i-1}}^{t_i} sum_k lambda_k [n]: i.i.d. Exp(1) under the true parameters (time rescaling)."""
    return _recursion(params, times, marks, None)[1]


def log_likelihood(
    params: HawkesParams, times: Tensor | np.ndarray, marks: Tensor | np.ndarray, end: float | None = None
) -> float:
    """The exact log-likelihood of one sequence observed on [0, end] (end: its last event if None)."""
    per_event, survival = event_log_likelihoods(params, times, marks, end)
    return float(per_event.sum() + survival)


def oracle_event_log_likelihoods(batch: EventBatch) -> tuple[Tensor, Tensor]:
    """The oracle on a simulated batch: per-event log-likelihoods [B, N] (0 at padding) and survival terms [B]."""
    if batch.params is None:
        raise ValueError("the batch has no true parameters (it was not simulated from a Hawkes process)")
    per_event = torch.zeros(batch.times.shape, dtype=torch.float64)
    survival = torch.zeros(batch.batch_size, dtype=torch.float64)
    for i in range(batch.batch_size):
        t, k = batch.sequence(i)
        end = None if batch.end is None else float(batch.end[i])
        values, survival[i] = event_log_likelihoods(batch.params.sequence(i), t.cpu(), k.cpu(), end)
        per_event[i, : len(values)] = torch.from_numpy(values)
    return per_event, survival


def excitations(params: HawkesParams, times: Tensor | np.ndarray, marks: Tensor | np.ndarray) -> np.ndarray:
    """The excitation ``e_k = lambda_k - mu_k`` just after each event's predecessor [n, M]: row i is
    the state the forecast of event i starts from, at t_{i-1} (row 0: the empty history at 0)."""
    alpha, beta = params.alpha[0].double().numpy(), float(params.beta[0])
    t = np.asarray(times, dtype=np.float64)
    k = np.asarray(marks, dtype=np.int64)
    out = np.zeros((len(t), alpha.shape[0]))
    for i in range(1, len(t)):
        out[i] = out[i - 1] * math.exp(-beta * (t[i - 1] - (t[i - 2] if i > 1 else 0.0))) + beta * alpha[:, k[i - 1]]
    return out


def next_event_forecasts(
    params: HawkesParams, times: Tensor | np.ndarray, marks: Tensor | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The true process's forecast of each event given the events before it, made right after its
    predecessor (at t_{i-1}; at 0 for the first): the expected waiting time [n] and the
    probability of each mark [n, M] (they sum to 1).

    After t_{i-1} the intensity is ``mu_k + e_k exp(-beta s)`` until the next event, so with
    a = mu_total / beta, c = e_total / beta and u = exp(-beta s) the survival is
    ``u^a exp(-c (1 - u))``, and

        E[wait] = int_0^inf S = e^-c / beta * int_0^1 u^(a-1) e^(c u) du = e^-c 1F1(a; a+1; c) / (a beta),
        P(mark k) = int_0^inf lambda_k S = mu_k E[wait] + e_k e^-c 1F1(a+1; a+2; c) / ((a+1) beta),

    evaluated as 1F1(1; b; -c) = e^-c 1F1(b - 1; b; c) (Kummer's transformation), which does not
    overflow for a large excitation c (a fitted matrix may have large nilpotent entries).

    The expected wait is the forecast time that minimises the squared error; the most probable
    mark, the accuracy-optimal mark.
    """
    mu, beta = params.mu[0].double().numpy(), float(params.beta[0])
    e = excitations(params, times, marks)
    a, c = mu.sum() / beta, e.sum(-1) / beta
    mean_wait = hyp1f1(1.0, a + 1, -c) / (a * beta)
    decayed = hyp1f1(1.0, a + 2, -c) / ((a + 1) * beta)  # int_0^inf exp(-beta s) S(s) ds
    probs = mu * mean_wait[:, None] + e * decayed[:, None]
    return mean_wait, probs


# ---- classical fit ----------------------------------------------------------------------------------
class SequenceLikelihood:
    """The log-likelihood of one sequence as a differentiable function of (mu, alpha, beta)."""

    def __init__(
        self, times: Tensor | np.ndarray, marks: Tensor | np.ndarray, num_marks: int, end: float | None = None
    ) -> None:
        self.t = torch.as_tensor(np.asarray(times, dtype=np.float64))
        k = torch.as_tensor(np.asarray(marks, dtype=np.int64))
        if len(self.t) == 0:
            raise ValueError("cannot fit a sequence without events")
        if len(k) and (int(k.min()) < 0 or int(k.max()) >= num_marks):
            raise ValueError(f"marks must be in 0..{num_marks - 1}")
        self.k, self.num_marks = k, num_marks
        self.onehot = torch.nn.functional.one_hot(k, num_marks).bool()  # [n, M]
        self.end = float(self.t[-1]) if end is None else float(end)

    def __call__(self, mu: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        """mu [M], alpha [M, M], beta [] (float64 tensors) -> the log-likelihood []."""
        t, k = self.t, self.k
        # decayed[i, m] = sum_{j < i, k_j = m} exp(-beta (t_i - t_j)), through an exclusive
        # logcumsumexp of beta t_j per mark: stable for any t (the exponent is <= log n).
        x = torch.where(self.onehot, (beta * t).unsqueeze(1), torch.full_like(self.onehot, _NO_EVENT, dtype=t.dtype))
        inclusive = torch.logcumsumexp(x, dim=0)
        exclusive = torch.cat([torch.full_like(inclusive[:1], _NO_EVENT), inclusive[:-1]])
        decayed = torch.exp(exclusive - (beta * t).unsqueeze(1))
        intensity = mu[k] + beta * (alpha[k] * decayed).sum(-1)
        compensator = mu.sum() * self.end + (alpha.sum(0)[k] * -torch.expm1(-beta * (self.end - t))).sum()
        return torch.log(intensity).sum() - compensator

    def at(self, params: HawkesParams) -> float:
        """The log-likelihood at a batch-of-one ``params``."""
        return float(self(params.mu[0].double(), params.alpha[0].double(), params.beta[0].double()))


@dataclass
class HawkesFit:
    params: HawkesParams  # batch of one
    log_likelihood: float  # at the fitted parameters, on the fitted window
    converged: bool  # whether the best start's optimiser reported success


def _perron_gradient(alpha: np.ndarray) -> tuple[float, np.ndarray]:
    """The spectral radius of a non-negative matrix and its gradient u v^T / (u . v) (Perron vectors)."""
    values, right = np.linalg.eig(alpha)
    i = int(np.argmax(np.abs(values)))
    left_values, left = np.linalg.eig(alpha.T)
    j = int(np.argmin(np.abs(left_values - values[i])))
    u, v = np.real(left[:, j]), np.real(right[:, i])
    denom = u @ v
    if abs(denom) < 1e-12:  # a degenerate root (e.g. alpha = 0): the max-row-sum direction bounds it
        return float(np.abs(values[i])), np.ones_like(alpha) / len(alpha)
    return float(np.abs(values[i])), np.outer(u, v) / denom


def fit(
    times: Tensor | np.ndarray,
    marks: Tensor | np.ndarray,
    num_marks: int,
    end: float | None = None,
    restarts: int = 3,
    seed: int = 0,
) -> HawkesFit:
    """Maximum-likelihood exponential Hawkes parameters of one sequence on [0, end], stationary.

    Starts: rates matched to the observed counts, ``restarts`` random branching levels and decays
    (seeded), the best optimum kept. Bounds scale with the sequence's mean rate r (beta in
    [1e-3 r, 1e3 r], mu >= 1e-6 r), so the fit does not depend on the time unit.
    """
    ll = SequenceLikelihood(times, marks, num_marks, end)
    M, n = num_marks, len(ll.t)
    rate = n / max(ll.end, 1e-12)
    counts = np.bincount(ll.k.numpy(), minlength=M) / max(ll.end, 1e-12)

    def unpack(x: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        v = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        return v, v[:M], v[M : M + M * M].view(M, M)

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        v, mu, alpha = unpack(x)
        loss = -ll(mu, alpha, v[-1]) / n  # per event: well scaled for any length
        (grad,) = torch.autograd.grad(loss, v)
        return float(loss.detach()), grad.numpy()

    def stationarity(x: np.ndarray) -> float:
        return MAX_RADIUS - _perron_gradient(x[M : M + M * M].reshape(M, M))[0]

    def stationarity_jac(x: np.ndarray) -> np.ndarray:
        g = np.zeros_like(x)
        g[M : M + M * M] = -_perron_gradient(x[M : M + M * M].reshape(M, M))[1].ravel()
        return g

    bounds = [(1e-6 * rate, None)] * M + [(0.0, None)] * (M * M) + [(1e-3 * rate, 1e3 * rate)]
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(max(1, restarts)):
        level = rng.uniform(0.1, 0.7)
        alpha0 = np.full((M, M), level / M)
        mu0 = np.maximum((np.eye(M) - alpha0) @ counts, 0.1 * counts + 1e-3 * rate)
        beta0 = rate * math.exp(rng.uniform(math.log(0.3), math.log(10.0)))
        x0 = np.concatenate([mu0, alpha0.ravel(), [beta0]])
        res = minimize(
            objective,
            x0,
            jac=True,
            method="SLSQP",
            bounds=bounds,
            constraints=[{"type": "ineq", "fun": stationarity, "jac": stationarity_jac}],
            options={"maxiter": 300, "ftol": 1e-10},
        )
        if best is None or res.fun < best.fun:
            best = res
    x = np.asarray(best.x)
    params = HawkesParams(
        torch.tensor(x[:M]).unsqueeze(0),
        torch.tensor(x[M : M + M * M]).view(1, M, M),
        torch.tensor(x[-1:]),
    )
    return HawkesFit(params, -float(best.fun) * n, bool(best.success))
