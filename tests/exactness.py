"""Shared pieces of the distribution-level exactness tests of the lossless decoders (``docs/lossless.md``).

* :class:`PrefixTable`: a discrete causal generator whose conditional is an arbitrary table row per (class, context),
  the context being the whole prefix (``order=None``: maximally context-sensitive, exact law by enumeration) or its
  last ``order`` tokens (a Markov chain: exact conditionals for long sequences and large vocabularies).
* One-sample tests of samples against a known law: :func:`joint_pvalue` (pooled Pearson chi-square over whole
  sequences), :func:`conditional_pvalue` (Pearson chi-square of every (position, context) row of a Markov chain,
  Anderson & Goodman 1957) and :func:`gaussian_pvalue` (standardised residuals of continuous tokens under their
  exact Gaussian conditionals).
"""

from __future__ import annotations

import math

import torch
from scipy import stats
from torch import Tensor

from vistok.decoding import SamplingArgs
from vistok.interfaces import Conditioning, KVCache


class PrefixTable:
    """Causal generator over ``V`` ids with one logit row per (class, position, context).

    The context of position ``p`` is ``x[max(0, p - order) : p]`` (``order=None``: the whole prefix).  Class
    ``num_classes`` is the null class (classifier-free guidance).  Every step checks that the decoder never leaves a
    gap between the valid cache and the window: the context tokens are read from the cache, so a cache that kept a
    rejected draft would change the law.
    """

    kind, is_causal = "discrete", True

    def __init__(self, logits: Tensor, seq_len: int, order: int | None = None):
        self.logits, self.seq_len, self.order = logits, seq_len, order
        self.num_classes, self.vocab_size = logits.shape[0] - 1, logits.shape[-1]
        sizes = [self.vocab_size ** self.context_len(p) for p in range(seq_len)]
        self.offset = torch.tensor([0, *sizes]).cumsum(0)[:-1]
        if logits.shape[1] != sum(sizes):
            raise ValueError(f"logits need {sum(sizes)} rows per class, got {logits.shape[1]}")

    @classmethod
    def random(cls, vocab_size: int, seq_len: int, order: int | None = None, num_classes: int = 2, *,
               scale: float = 1.0, sticky: float = 0.0, seed: int = 0) -> PrefixTable:
        """Logits ``scale * N(0, 1)`` per row, plus ``sticky`` on the id of the previous token."""
        sizes = [vocab_size ** (p if order is None else min(p, order)) for p in range(seq_len)]
        g = torch.Generator().manual_seed(seed)
        logits = scale * torch.randn(num_classes + 1, sum(sizes), vocab_size, generator=g)
        for p in range(1, seq_len):
            ids = torch.arange(sizes[p])
            logits[:, sum(sizes[:p]) + ids, ids % vocab_size] += sticky  # the last context token is ids % V
        return cls(logits, seq_len, order)

    def context_len(self, p: int) -> int:
        return p if self.order is None else min(p, self.order)

    def row(self, tokens: Tensor, p: int) -> Tensor:
        """Row ids (b,) of the contexts of position ``p`` in ``tokens`` (b, >= p)."""
        k = self.context_len(p)
        weights = self.vocab_size ** torch.arange(k - 1, -1, -1)
        return self.offset[p] + (tokens[:, p - k : p] * weights).sum(-1)

    def rows(self, tokens: Tensor) -> Tensor:
        """Row ids (b, n) of every position of whole sequences."""
        return torch.stack([self.row(tokens, p) for p in range(self.seq_len)], 1)

    def new_cache(self, cond: Conditioning, max_tokens: int | None = None) -> KVCache:
        cache = KVCache(1, cond.batch_size, 1, 1, 0, max_tokens or self.seq_len)
        cache.start = torch.where(cond.labels < 0, self.num_classes, cond.labels)
        cache.tokens = torch.zeros(cond.batch_size, self.seq_len, dtype=torch.long)
        return cache

    def step(self, inputs: Tensor, positions: Tensor, cache: KVCache) -> Tensor:
        assert bool((positions.min(1).values <= cache.lengths).all()), "a gap between the cache and the window"
        cache.advance(positions)
        b = torch.arange(len(inputs))[:, None].expand_as(inputs)
        fed = positions > 0
        cache.tokens[b[fed], positions[fed] - 1] = inputs[fed]
        return self.logits[cache.start[:, None], self.rows(cache.tokens).gather(1, positions)]

    def probs(self, tokens: Tensor, label: int, cfg_scale: float, temperature: float, top_k: int | None) -> Tensor:
        """Processed conditionals (b, n, v), float64, of whole sequences (teacher forcing): what AR samples from."""
        rows = self.rows(tokens)
        logits = self.logits[label, rows]
        if cfg_scale != 1.0:
            null = self.logits[self.num_classes, rows]
            logits = null + cfg_scale * (logits - null)
        return SamplingArgs(temperature, top_k).probs(logits).double()

    def law(self, label: int, cfg_scale: float, temperature: float, top_k: int | None) -> Tensor:
        """Exact probability of each of the ``V**N`` sequences (index: the sequence read as a base-V number)."""
        v, n = self.vocab_size, self.seq_len
        seqs = torch.cartesian_prod(*[torch.arange(v)] * n).view(-1, n)
        return self.probs(seqs, label, cfg_scale, temperature, top_k).gather(-1, seqs[..., None])[..., 0].prod(-1)


def pooled_chi2(observed: Tensor, expected: Tensor, min_expected: float = 5.0) -> tuple[float, int]:
    """Pearson chi-square ``(statistic, df)`` after pooling the cells with expected count ``< min_expected`` into
    one cell (folded into the smallest kept cell if still below it).  1-D tensors of equal length."""
    order = expected.argsort(descending=True)
    e, o = expected[order].double(), observed[order].double()
    big = e >= min_expected
    e = torch.cat([e[big], e[~big].sum(0, keepdim=True)])
    o = torch.cat([o[big], o[~big].sum(0, keepdim=True)])
    if e[-1] < min_expected and len(e) > 1:
        e = torch.cat([e[:-2], e[-2:].sum(0, keepdim=True)])
        o = torch.cat([o[:-2], o[-2:].sum(0, keepdim=True)])
    keep = e > 0
    if bool((o[~keep] > 0).any()):  # an impossible outcome was observed
        return math.inf, max(1, int(keep.sum()) - 1)
    return float(((o[keep] - e[keep]) ** 2 / e[keep]).sum()), int(keep.sum()) - 1


def joint_pvalue(tokens: Tensor, law: Tensor) -> float:
    """p-value of samples (M, N) from ``V**N`` sequences against their exact law (pooled chi-square)."""
    v = round(len(law) ** (1 / tokens.shape[1]))
    index = (tokens * v ** torch.arange(tokens.shape[1] - 1, -1, -1)).sum(-1)
    chi2, df = pooled_chi2(torch.bincount(index, minlength=len(law)), law * len(tokens))
    return float(stats.chi2.sf(chi2, df))


def conditional_pvalue(tokens: Tensor, probs: Tensor, rows: Tensor) -> float:
    """p-value of samples (M, N) of a Markov chain against its conditionals ``probs`` (M, N, V) (each sample's own,
    by teacher forcing) with context row ids ``rows`` (M, N).

    For every (position, context) the counts of the next token are compared with ``n_context * p(. | context)``
    (cells pooled as in :func:`pooled_chi2`); the statistics and degrees of freedom add up over all rows
    (asymptotically chi-square given the context counts: Anderson & Goodman, Ann. Math. Stat. 1957).
    """
    m, n, v = probs.shape
    total, dof = 0.0, 0
    for p in range(n):
        ids, inverse = torch.unique(rows[:, p], return_inverse=True)
        counts = torch.zeros(len(ids), v, dtype=torch.float64).index_put_(
            (inverse, tokens[:, p]), torch.ones(m, dtype=torch.float64), accumulate=True)
        first = torch.zeros(len(ids), dtype=torch.long).scatter_(0, inverse, torch.arange(m))
        expected = counts.sum(1, keepdim=True) * probs[first, p]
        for o, e in zip(counts, expected):
            if float(e.sum()) >= 10:  # rows seen too rarely carry no power; skipping them keeps the test valid
                chi2, df = pooled_chi2(o, e)
                total, dof = total + chi2, dof + df
    return float(stats.chi2.sf(total, max(dof, 1)))


def gaussian_pvalue(residuals: Tensor) -> float:
    """p-value that standardised residuals (M, N, D) are i.i.d. N(0, 1): per position, a two-sided chi-square test
    of ``sum e^2`` and a two-sided z-test of ``sum e``; plus one Kolmogorov-Smirnov test of all of them; Bonferroni
    over the ``2 N + 1`` tests."""
    m, n, d = residuals.shape
    e = residuals.double()
    pvalues = [float(stats.kstest(e.flatten().numpy(), "norm").pvalue)]
    for p in range(n):
        s2, k = float((e[:, p] ** 2).sum()), m * d
        pvalues.append(2 * min(stats.chi2.sf(s2, k), stats.chi2.cdf(s2, k)))
        pvalues.append(2 * stats.norm.sf(abs(float(e[:, p].sum())) / math.sqrt(k)))
    return min(1.0, min(pvalues) * len(pvalues))


@torch.no_grad()
def gaussian_residuals(generator, paths, tokens: Tensor, labels: Tensor, cfg_scale: float,
                       temperature: float) -> Tensor:
    """Standardised residuals (M, N, D) of continuous tokens under the exact law of a causal generator whose head
    samples a token by a path that is *affine* in its Gaussian noise (the Gaussian toy head; a DiffLoss head whose
    network is the exact denoiser of a Gaussian, with last-step noise).

    Teacher forcing gives every position's conditions; the token's law is then ``N(mean, diag(var))`` with
    ``mean`` the path of zero noise and ``var`` the sum over the noise draws of the squared unit responses.  Under
    the exact law of the generator (:func:`~vistok.decoding.continuous.decode_car` with last-step noise) the
    residuals are i.i.d. N(0, 1).
    """
    m, n, d = tokens.shape
    cond = Conditioning(labels=labels)
    guided = cfg_scale != 1.0
    full = cond.cat(cond.null()) if guided else cond
    inputs = torch.nn.functional.pad(tokens[:, :-1], (0, 0, 1, 0))
    inputs = torch.cat([inputs, inputs]) if guided else inputs
    z = generator.step(inputs, torch.arange(n).expand(len(inputs), -1), generator.new_cache(full))
    z, z_null = z.chunk(2) if guided else (z, None)
    z, z_null = z.reshape(m * n, -1), None if z_null is None else z_null.reshape(m * n, -1)
    zero = torch.zeros(paths.path_len, m * n, d, dtype=torch.float64)

    def final(noise: Tensor) -> Tensor:
        return paths.path_sample(z, z_null, cfg_scale, temperature, noise.to(z.dtype))[0][-1].double()

    mean, var = final(zero), torch.zeros(m * n, d, dtype=torch.float64)
    for k in range(paths.path_len):
        unit = zero.clone()
        unit[k] = 1.0
        var += (final(unit) - mean) ** 2
    return ((tokens.reshape(m * n, d).double() - mean) / var.sqrt()).view(m, n, d)
