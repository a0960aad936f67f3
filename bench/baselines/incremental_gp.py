"""An exact GP whose Cholesky factor grows by one row per new point (float64).

With ``K + noise^2 I = L L^T`` for N points, a new point x with cross-covariances k (N) and prior
variance c extends the factor by the row ``[l^T, d]``, where ``L l = k`` (one triangular solve, O(N^2))
and ``d = sqrt(c + noise^2 - l^T l)``. The whitened targets ``z = L^-1 y`` extend by one entry the
same way, so the mean weights never need a refactorisation. Predicting M targets needs
``L^-1 K(X, X*)`` for the variances: O(N^2 M).

The factor lives in a preallocated ``capacity x capacity`` buffer whose unused rows are those of
the identity. Solving with the whole buffer then gives the solution for the first N rows padded
with zeros, and the buffer stays contiguous: LAPACK takes it as is, whereas a ``[:N, :N]`` view
would be copied (O(N^2) memory traffic) on every solve. Cost and memory are O(capacity^2), so the
capacity should be close to the number of points (the benchmark gives N + a few).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from model.data.gp import Kernel, kernel_matrix


class IncrementalGP:
    """Exact GP regression, 1 task, with the true kernel hyperparameters (an oracle's, if the task's)."""

    def __init__(
        self, capacity: int, dim_x: int, kernel: Kernel, length: float, scale: float, period: float, noise_std: float
    ) -> None:
        self.kernel, self.noise_var = kernel, noise_std**2
        self.hyp = tuple(torch.tensor([v], dtype=torch.float64) for v in (length, scale, period))
        self.chol = torch.eye(capacity, dtype=torch.float64)
        self.x = torch.zeros(capacity, dim_x, dtype=torch.float64)
        self.z = torch.zeros(capacity, dtype=torch.float64)  # L^-1 y
        self.n = 0

    @property
    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.chol, self.x, self.z))

    def _k(self, a: Tensor, b: Tensor) -> Tensor:
        return kernel_matrix(self.kernel, a.unsqueeze(0), b.unsqueeze(0), *self.hyp)[0]

    def _solve(self, rhs: Tensor) -> Tensor:
        """L^-1 rhs for rhs [n, m] over the first n rows; returns [capacity, m], zero below row n."""
        padded = torch.zeros(self.chol.shape[0], rhs.shape[1], dtype=torch.float64)
        padded[: rhs.shape[0]] = rhs
        return torch.linalg.solve_triangular(self.chol, padded, upper=False)

    def fit(self, x: Tensor, y: Tensor) -> None:
        """Start from n points at once (one Cholesky, O(n^3)); the same factor as n single adds."""
        n = x.shape[0]
        x = x.double()
        cov = self._k(x, x) + self.noise_var * torch.eye(n, dtype=torch.float64)
        self.chol[:n, :n] = torch.linalg.cholesky(cov)
        self.x[:n] = x
        self.z[:n] = self._solve(y.double().view(n, 1))[:n, 0]
        self.n = n

    def add(self, x: Tensor, y: float) -> None:
        """Add one point: a rank-1 extension of the factor, O(N^2)."""
        n = self.n
        if n == self.chol.shape[0]:
            raise ValueError(f"the GP is full ({n} points); make it with a larger capacity")
        x = x.double().view(1, -1)
        k = self._k(self.x[:n], x)  # [n, 1]
        row = self._solve(k)[:n, 0]
        d = math.sqrt(float(self._k(x, x)) + self.noise_var - float(row @ row))
        self.chol[n, :n] = row
        self.chol[n, n] = d
        self.z[n] = (y - float(row @ self.z[:n])) / d
        self.x[n] = x[0]
        self.n = n + 1

    def truncate(self, n: int) -> None:
        """Forget every point after the first n (their rows become identity rows again)."""
        self.chol[n : self.n] = torch.eye(self.chol.shape[0], dtype=torch.float64)[n : self.n]
        self.n = n

    def predict(self, xq: Tensor) -> tuple[Tensor, Tensor]:
        """Predictive mean and variance of noisy observations at xq [M, dx]: O(N^2 M)."""
        n = self.n
        xq = xq.double()
        v = self._solve(self._k(self.x[:n], xq))[:n]  # [n, M]
        mean = v.T @ self.z[:n]
        prior = self.hyp[1].square() + self.noise_var
        return mean, (prior - v.square().sum(0)).clamp_min(1e-12)
