"""models.dropout: masks from 16 random bits per entry are Bernoulli(1 - p), scaled 1/(1 - p)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unified_petl.models.dropout import LEVELS, Dropout, dropout, keep_mask


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_keep_rate_is_one_minus_rate_and_entries_are_independent(rate):
    shape = (64, 128, 128)  # 1M entries
    keep = np.asarray(keep_mask(jax.random.key(0), rate, shape))
    q = round((1 - rate) * LEVELS) / LEVELS
    assert abs(q - (1 - rate)) <= 0.5 / LEVELS
    n = keep.size
    sigma = np.sqrt(q * (1 - q) / n)
    assert abs(keep.mean() - q) < 5 * sigma
    # the two halves of one random word (entries 2i, 2i+1) and neighbours across words
    for a, b in ((keep[..., 0::2], keep[..., 1::2]), (keep[..., 1:-1:2], keep[..., 2::2])):
        both = (a & b).mean()
        assert abs(both - q * q) < 5 * np.sqrt(q * q * (1 - q * q) / a.size)
    # independent of the position along every axis: rows/columns keep at the same rate
    for axis in (0, 1, 2):
        rates = keep.mean(axis=tuple(i for i in range(3) if i != axis))
        per = n // rates.size
        assert np.abs(rates - q).max() < 5 * np.sqrt(q * (1 - q) / per)


def test_kept_entries_are_scaled_and_dropped_entries_are_zero():
    x = jax.random.normal(jax.random.key(1), (8, 16, 32)) + 3.0  # no zeros in x
    out = np.asarray(dropout(x, jax.random.key(2), 0.2))
    kept = out != 0
    assert 0.7 < kept.mean() < 0.9
    np.testing.assert_allclose(out[kept], (np.asarray(x) / 0.8)[kept], rtol=1e-6)  # 1 ulp
    # another key, another mask; the same key, the same mask
    assert (np.asarray(dropout(x, jax.random.key(3), 0.2)) != 0).tolist() != kept.tolist()
    np.testing.assert_array_equal(np.asarray(dropout(x, jax.random.key(2), 0.2)), out)


def test_edge_rates_and_odd_last_axis():
    x = jnp.ones((4, 7))  # odd last axis: jax.random.bernoulli's mask
    out = np.asarray(dropout(x, jax.random.key(0), 0.5))
    assert set(np.unique(out).tolist()) <= {0.0, 2.0} and 0 < (out != 0).sum() < out.size
    np.testing.assert_array_equal(np.asarray(dropout(x, jax.random.key(0), 0.0)), x)
    np.testing.assert_array_equal(np.asarray(dropout(x, jax.random.key(0), 1.0)), 0 * x)
    tiny = np.asarray(keep_mask(jax.random.key(0), 1e-7, (4, 8)))  # below 2^-16: bernoulli
    assert tiny.all()


def test_module_uses_the_dropout_rng_and_is_off_when_deterministic():
    x = jnp.ones((4, 16, 8))
    module = Dropout(0.5)
    np.testing.assert_array_equal(module.apply({}, x, deterministic=True), x)
    a = module.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    b = module.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    assert set(np.unique(np.asarray(a)).tolist()) == {0.0, 2.0}
    assert not np.array_equal(a, b)
