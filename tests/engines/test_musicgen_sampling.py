"""The batched sampler: each row by its own settings in one fixed set of tensor operations, noise from
a counter-based generator keyed by (seed, window, position, codebook, token) alone, and draws that
follow the softmax of the kept logits."""

import pytest
import torch

from benchmarks.musicgen_steps import OperationCount
from leap_ray.engines.musicgen_sampling import SamplingRows, guide, gumbel_noise, hash32, noise_key, sample

LOGITS = torch.tensor([[0.0, 1.0, 5.0, 2.0], [3.0, 0.0, 0.0, 2.9]])  # (codebooks, vocabulary) of one row


def settings(rows: int = 1, temperature=1.0, top_k=250, top_p=0.0, guidance=3.0, seed=7, window=0):
    """Rows of one setting each (a scalar is every row's)."""

    def column(value, dtype):
        values = value if isinstance(value, list) else [value] * rows
        return torch.tensor(values, dtype=dtype)

    keys = [noise_key(s, window) for s in (seed if isinstance(seed, list) else [seed] * rows)]
    return SamplingRows(
        column(guidance, torch.float32),
        column(temperature, torch.float64),
        column(top_k, torch.long),
        column(top_p, torch.float64),
        torch.tensor(keys),
    )


def draws(logits: torch.Tensor, positions: int, **fields) -> torch.Tensor:
    """(positions, codebooks) tokens of one row at positions 0..positions - 1 (each a fresh draw)."""
    rows = logits[None].expand(positions, -1, -1)
    return sample(rows, settings(positions, **fields), torch.arange(positions))


def lowbias32(word: int) -> int:
    """The reference hash on Python integers."""
    word ^= word >> 16
    word = (word * 0x7FEB352D) & 0xFFFFFFFF
    word ^= word >> 15
    word = (word * 0x846CA68B) & 0xFFFFFFFF
    return word ^ (word >> 16)


def test_the_tensor_hash_equals_the_reference_on_python_integers():
    words = [0, 1, 2, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, 0xFFFFFFFF]
    assert hash32(torch.tensor(words)).tolist() == [lowbias32(word) for word in words]


def test_temperature_zero_is_greedy_and_a_vanishing_temperature_too_not_nan():
    assert draws(LOGITS, 3, temperature=0.0).tolist() == [[2, 0]] * 3
    # Found by fuzzing: 3e-305 overflowed logits / temperature to inf, and softmax to NaN.
    assert draws(LOGITS, 3, temperature=3e-305).tolist() == [[2, 0]] * 3


def test_top_k_draws_only_among_the_k_likeliest():
    tokens = draws(LOGITS, 400, top_k=2, temperature=5.0)
    assert set(tokens[:, 0].tolist()) == {2, 3} and set(tokens[:, 1].tolist()) == {0, 3}


def test_top_p_keeps_the_smallest_set_reaching_p():
    tokens = draws(LOGITS, 400, top_p=0.5)
    assert set(tokens[:, 0].tolist()) == {2}
    assert set(draws(LOGITS, 400, top_p=0.99, temperature=3.0)[:, 0].tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, 0, 0.0), (2.0, 3, 0.0), (1.5, 0, 0.9)])
def test_draws_follow_the_softmax_of_the_kept_logits(temperature, top_k, top_p):
    logits = torch.tensor([[0.0, 1.0, 2.0, 0.5, -1.0]])
    tokens = draws(logits, 20_000, temperature=temperature, top_k=top_k, top_p=top_p)[:, 0]
    scaled = logits[0] / temperature
    probabilities = scaled.softmax(-1)
    order = probabilities.argsort(descending=True)
    kept = torch.zeros(5, dtype=torch.bool)
    if top_p > 0:
        sorted_probabilities = probabilities[order]
        kept[order[sorted_probabilities.cumsum(0) - sorted_probabilities <= top_p]] = True
    else:
        kept[order[: top_k or 5]] = True
    expected = torch.where(kept, scaled.exp(), 0.0)
    expected /= expected.sum()
    frequencies = torch.bincount(tokens, minlength=5) / len(tokens)
    assert (frequencies - expected).abs().max() < 0.015, (frequencies, expected)


def test_each_rows_draw_depends_on_its_own_seed_window_and_position_not_its_neighbours():
    guided = torch.randn(16, 4, 32, generator=torch.Generator().manual_seed(0))
    mixed = settings(
        16,
        temperature=[0.0, 1.0, 0.7, 2.0] * 4,
        top_k=[0, 5, 250, 1] * 4,
        top_p=[0.0, 0.0, 0.9, 0.0] * 4,
        seed=list(range(16)),
        window=0,
    )
    positions = torch.arange(16) * 3 + 1
    together = sample(guided, mixed, positions)
    for row in range(16):
        alone = SamplingRows(*(tensor[row : row + 1] for tensor in mixed.tensors()))
        assert torch.equal(
            sample(guided[row : row + 1], alone, positions[row : row + 1]), together[row : row + 1]
        )
    assert not torch.equal(sample(guided, mixed, positions + 1), together)  # the position is in the key
    assert noise_key(1, 0) != noise_key(1, 1) != noise_key(2, 1)


def test_guidance_is_per_row_and_cond_plus_scaled_difference():
    logits = torch.randn(4, 2, 8)
    guided = guide(logits, torch.tensor([1.0, 3.0]))
    assert torch.allclose(guided[0], logits[0])  # scale 1: the conditional row
    assert torch.allclose(guided[1], logits[3] + (logits[2] - logits[3]) * 3.0)


def operations(rows: int) -> int:
    guided = torch.randn(rows, 4, 64)
    rows_settings = settings(rows, temperature=0.8, top_k=[0, 10] * (rows // 2) or 0, top_p=0.0)
    with OperationCount() as counter:
        sample(guided, rows_settings, torch.arange(rows))
    return counter.count


def test_sixteen_rows_take_the_operations_of_two():
    assert operations(16) == operations(2)


def test_no_two_draws_of_a_window_share_their_noise():
    # Each (position, codebook, token) of a window has its own counter, and the hash is a bijection:
    # every noise value of a 1,505-position window is distinct (a counter of (position, codebook)
    # xor the token made whole rows of noise repeat, permuted).
    noise = gumbel_noise(torch.tensor([noise_key(0, 0)]), torch.arange(1505), codebooks=4, vocabulary=64)
    assert noise.unique().numel() == noise.numel() == 1505 * 4 * 64
    assert noise_key(0, 0) != 0


def test_rows_of_different_keys_do_not_share_noise():
    keys = torch.tensor([noise_key(seed, 0) for seed in range(64)])
    noise = gumbel_noise(keys, torch.zeros(64, dtype=torch.long), codebooks=4, vocabulary=64)
    assert noise.unique().numel() == noise.numel()
