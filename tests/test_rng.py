"""Keyed randomness: exact categorical draws, and a row's draws depend on its key alone."""

import torch
from scipy.stats import chisquare

from os_cli.mix.rng import hash32, keyed_categorical, keyed_uniform, row_keys


def test_hash32_is_a_bijection_on_a_sample_and_matches_reference():
    x = torch.arange(0, 1 << 16, dtype=torch.int64) * 65537
    h = hash32(x)
    assert h.unique().numel() == x.numel()
    assert int(h.max()) < (1 << 32) and int(h.min()) >= 0

    def reference(v):  # plain-Python lowbias32
        v ^= v >> 16
        v = (v * 0x7FEB352D) & 0xFFFFFFFF
        v ^= v >> 15
        v = (v * 0x846CA68B) & 0xFFFFFFFF
        return v ^ (v >> 16)

    for v in [0, 1, 12345, 0xFFFFFFFF, 0xDEADBEEF]:
        assert int(hash32(torch.tensor([v]))) == reference(v)


def test_keyed_uniform_is_uniform_and_open_interval():
    u = keyed_uniform(row_keys(torch.arange(200_000)), step=3)
    assert u.dtype == torch.float64
    assert 0 < float(u.min()) and float(u.max()) < 1
    counts = torch.histc(u, bins=20, min=0, max=1)
    assert chisquare(counts.numpy()).pvalue > 1e-3


def test_keyed_categorical_follows_the_distribution_across_rows_and_steps():
    torch.manual_seed(0)
    logq = torch.log_softmax(torch.randn(1, 8) * 1.5, -1)
    logq[0, 5] = float("-inf")  # a zero-probability entry must never be drawn
    probs = torch.softmax(logq.double(), -1)[0]

    draws = keyed_categorical(logq.expand(60_000, 8), row_keys(torch.arange(60_000)), step=0)
    counts = torch.bincount(draws, minlength=8).double()
    assert counts[5] == 0
    keep = probs > 0
    assert chisquare(counts[keep].numpy(), (probs[keep] * counts.sum()).numpy()).pvalue > 1e-3

    one_key = row_keys(torch.tensor([42]))
    draws = torch.cat([keyed_categorical(logq, one_key, step) for step in range(20_000)])
    counts = torch.bincount(draws, minlength=8).double()
    assert chisquare(counts[keep].numpy(), (probs[keep] * counts.sum()).numpy()).pvalue > 1e-3


def test_draws_depend_on_the_key_not_the_batch():
    logq = torch.log_softmax(torch.randn(6, 50), -1)
    keys = row_keys(torch.arange(100, 106))
    together = keyed_categorical(logq, keys, step=7)
    alone = torch.cat([keyed_categorical(logq[i : i + 1], keys[i : i + 1], step=7) for i in range(6)])
    assert torch.equal(together, alone)
    assert not torch.equal(keyed_uniform(keys, 7), keyed_uniform(keys, 8))
    assert not torch.equal(keyed_uniform(keys, 7, stream=0), keyed_uniform(keys, 7, stream=1))
