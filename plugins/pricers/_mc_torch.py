"""The torch back end of the ``mc`` pricer: Black-Scholes (exact scheme) and Heston (QE or
full-truncation Euler) European calls and puts on any torch device (CUDA, or the CPU).

The same schemes, antithetic pairs and control variates as the numba kernels
(:mod:`._mc_paths`), vectorised over (options, paths) in float64, with draws from one
``torch.Generator(device).manual_seed(seed)`` per ``price`` call: reproducible on one
device and torch version, but not equal to the CPU streams of :mod:`._rng` (nor across
devices), and the draws depend on how the batch is chunked, which depends only on the
batch size and the settings. Options are grouped by step count and processed in chunks of
at most ``_ELEMENTS`` simultaneous paths; per chunk the sample mean, the centred sums of
squares and the cross-moment with the control are combined across chunks by Chan's
pairwise update.
"""

from __future__ import annotations

import numpy as np

_ELEMENTS = {"cpu": 1 << 16, "cuda": 1 << 23}  # paths simulated at once
_PSI_C = 1.5


def prepare(P: np.ndarray, nsteps: np.ndarray, cvmean, device: str) -> dict:
    """Move the parameter matrix (and the control means) to ``device`` (untimed)."""
    import torch

    dev = torch.device(device)
    out = {"P": torch.as_tensor(P, dtype=torch.float64, device=dev), "nsteps": np.asarray(nsteps),
           "cvmean": None if cvmean is None else np.asarray(cvmean, dtype=np.float64)}
    groups = []
    for n in np.unique(out["nsteps"]):
        idx = np.flatnonzero(out["nsteps"] == n)
        groups.append((int(n), idx, torch.as_tensor(idx, device=dev)))
    out["groups"] = groups
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return out


def price(pricer, inputs):
    """(mean, stderr) as NumPy arrays, one per option."""
    import torch

    P = inputs["P"]
    dev = P.device
    m = P.shape[0]
    gen = torch.Generator(device=dev)
    gen.manual_seed(pricer.seed_)
    anti = bool(pricer.antithetic)
    cv = pricer.cv_
    heston = P.shape[1] == 11
    qe = pricer.scheme_ == "qe"
    nsamp = pricer.npaths_ // 2 if anti else pricer.npaths_
    limit = _ELEMENTS.get(dev.type, _ELEMENTS["cuda"])
    stats = torch.zeros((m, 6), dtype=torch.float64, device=dev)  # n, mean y, M2 y, mean x, M2 x, C xy
    for n, _, idx_t in inputs["groups"]:
        lanes = 2 if anti else 1
        per = max(1, limit // lanes)
        rows_per = max(1, per // nsamp) if nsamp <= per else 1
        cols_per = min(nsamp, per)
        for r0 in range(0, idx_t.numel(), rows_per):
            rows = idx_t[r0:r0 + rows_per]
            p = P.index_select(0, rows)
            acc = None
            for c0 in range(0, nsamp, cols_per):
                k = min(cols_per, nsamp - c0)
                if heston:
                    y, x = _heston(p, n, k, anti, cv, qe, pricer.cp_, gen)
                else:
                    y, x = _gbm(p, n, k, anti, cv, pricer.cp_, gen)
                acc = _combine(acc, y, x)
            stats[rows] = torch.stack(acc, dim=1)
    s = stats.cpu().numpy()
    N, my, Myy, mx, Mxx, Mxy = (s[:, i] for i in range(6))
    with np.errstate(all="ignore"):
        if cv:
            b = np.where(Mxx > 0.0, Mxy / np.where(Mxx > 0.0, Mxx, 1.0), 0.0)
            mean = my - b * (mx - inputs["cvmean"])
            var = np.maximum(Myy - 2.0 * b * Mxy + b * b * Mxx, 0.0) / (N - 1.0)
        else:
            mean, var = my, np.maximum(Myy, 0.0) / (N - 1.0)
        return mean, np.sqrt(var / N)


def _combine(acc, y, x):
    """Chan's update of (n, mean y, M2 y, mean x, M2 x, C xy) per option with a chunk of samples."""
    import torch

    k = float(y.shape[1])
    my = y.mean(dim=1)
    mx = x.mean(dim=1)
    dy = y - my[:, None]
    dx = x - mx[:, None]
    chunk = (torch.full_like(my, k), my, (dy * dy).sum(1), mx, (dx * dx).sum(1), (dx * dy).sum(1))
    if acc is None:
        return chunk
    n, ay, Ay, ax, Ax, Cxy = acc
    tot = n + k
    ey = my - ay
    ex = mx - ax
    w = n * k / tot
    return (tot, ay + ey * k / tot, Ay + chunk[2] + ey * ey * w, ax + ex * k / tot, Ax + chunk[4] + ex * ex * w,
            Cxy + chunk[5] + ex * ey * w)


def _col(p, j):
    return p[:, j:j + 1]


def _samples(ya, xa, anti):
    if anti:  # first half lane A, second half lane B: pair averages
        h = ya.shape[1] // 2
        return 0.5 * (ya[:, :h] + ya[:, h:]), 0.5 * (xa[:, :h] + xa[:, h:])
    return ya, xa


def _normal(shape, anti, gen, like):
    import torch

    z = torch.randn(shape, generator=gen, dtype=torch.float64, device=like.device)
    return torch.cat([z, -z], dim=1) if anti else z


def _gbm(p, n, k, anti, cv, cp, gen):
    """k samples (pairs with ``anti``) of the discounted payoff and control, exact log steps."""
    import torch

    S, K, T, r, q, sig = (_col(p, j) for j in range(6))
    dt = T / n
    w = torch.zeros((p.shape[0], 2 * k if anti else k), dtype=torch.float64, device=p.device)
    for _ in range(n):
        w += _normal((p.shape[0], k), anti, gen, p)
    ST = S * torch.exp((r - q - 0.5 * sig * sig) * T + sig * torch.sqrt(dt) * w)
    disc = torch.exp(-r * T)
    y = disc * torch.clamp(cp * (ST - K), min=0.0)
    x = disc * ST if cv else torch.zeros_like(y)
    return _samples(y, x, anti)


def _heston(p, n, k, anti, cv, qe, cp, gen):
    import torch

    S, K, T, r, q, v0, kappa, theta, xi, rho, sbar = (_col(p, j) for j in range(11))
    shape = (p.shape[0], k)
    width = 2 * k if anti else k
    dt = T / n
    sdt = torch.sqrt(dt)
    rhob = torch.sqrt(torch.clamp(1.0 - rho * rho, min=0.0))
    E = torch.exp(-kappa * dt)
    omE = -torch.expm1(-kappa * dt)
    cm = theta * omE
    c1 = xi * xi * E * omE / kappa
    c2 = theta * xi * xi * omE * omE / (2.0 * kappa)
    k0 = (r - q) * dt - rho * kappa * theta * dt / xi
    k1 = 0.5 * dt * (kappa * rho / xi - 0.5) - rho / xi
    k2 = 0.5 * dt * (kappa * rho / xi - 0.5) + rho / xi
    k3 = 0.5 * dt * (1.0 - rho * rho)
    v = v0.expand(-1, width).clone()
    x = torch.log(S).expand(-1, width).clone()
    w = torch.zeros_like(x)
    half_ulp = 2.0 ** -54
    for _ in range(n):
        if qe:
            zv = _normal(shape, anti, gen, p)
            u = torch.rand(shape, generator=gen, dtype=torch.float64, device=p.device) + half_ulp  # in (0, 1)
            if anti:
                u = torch.cat([u, 1.0 - u], dim=1)
            z = _normal(shape, anti, gen, p)
            m = cm + v * E
            s2 = v * c1 + c2
            m2 = m * m
            quad = s2 <= _PSI_C * m2
            t = torch.where(quad, 2.0 * m2 / s2, torch.full_like(m, 2.0))
            b2 = t - 1.0 + torch.sqrt(t * (t - 1.0))
            a = m / (1.0 + b2)
            vq = a * (torch.sqrt(b2) + zv) ** 2
            tot = s2 + m2
            omp = 2.0 * m2 / tot
            omu = 1.0 - u
            ve = torch.where(omu >= omp, torch.zeros_like(m), tot / (2.0 * m) * torch.log(omp / omu))
            vn = torch.where(quad, vq, ve)
            x = x + k0 + k1 * v + k2 * vn + torch.sqrt(k3 * (v + vn)) * z
            if cv:
                w = w + rho * torch.where(quad, zv, torch.special.ndtri(u)) + rhob * z
            v = vn
        else:
            z1 = _normal(shape, anti, gen, p)
            z2 = _normal(shape, anti, gen, p)
            vp = torch.clamp(v, min=0.0)
            sv = torch.sqrt(vp) * sdt
            x = x + (r - q) * dt - 0.5 * vp * dt + sv * z1
            v = v + kappa * dt * (theta - vp) + xi * sv * (rho * z1 + rhob * z2)
            w = w + z1
    disc = torch.exp(-r * T)
    y = disc * torch.clamp(cp * (torch.exp(x) - K), min=0.0)
    if cv:
        G = S * torch.exp((r - q - 0.5 * sbar * sbar) * T + sbar * sdt * w)
        xc = disc * torch.clamp(cp * (G - K), min=0.0)
    else:
        xc = torch.zeros_like(y)
    return _samples(y, xc, anti)

