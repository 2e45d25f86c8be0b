"""MusicGen's sampling for every running track at once, on the device, in a fixed number of tensor
operations whatever the number of tracks: classifier-free guidance, then temperature, then top-p
(when > 0) or top-k, or greedy at temperature 0 — each row with its own settings, as tensors.

Design:
- Per-row settings are tensors: a row's top-k is a threshold, the k-th largest of its sorted scaled
  logits (gathered at k - 1); its top-p keeps the sorted tokens whose exclusive cumulative
  probability is at most p (the smallest set reaching p, as audiocraft's `sample_top_p`).
- Randomness is Gumbel-max: the token drawn is the argmax over the kept tokens of
  logits / temperature + Gumbel noise, which draws from the softmax of the kept logits, with no
  normalisation and no host generator.
- The noise comes from a counter-based generator: a token's 32 random bits are
  hash(hash(counter ^ key) ^ key), where the key hashes (seed, window) once per window and the
  counter ((position * codebooks + codebook) * vocabulary + token) is
  distinct for every draw of a window (12.3 M for a 30 s window of musicgen, under 2**32). The hash
  is Chris Wellons' `lowbias32` over 32-bit words (a bijection), written with int64 tensor
  operations whose products never overflow (a 32-bit multiply done on 16-bit halves), so the same
  seed gives the same noise on any device and in any batch, whoever its batch-mates are. A key has
  32 bits: two different seeds share a window's noise with odds of 1 in 2**32 (about even odds
  somewhere among 77,000 requests, the birthday bound), which costs nothing but that coincidence.
- Scaled logits and noise are float64: a vanishing temperature (which float32 rounds to 0) gives
  scaled logits of 0 and -inf, never NaN, and 32 random bits give uniforms strictly inside (0, 1)
  (float32 would round the top 128 values to 1 and make infinite noise).
"""

from dataclasses import dataclass

import torch

from leap_ray.api.musicgen import MusicGenRequest

WORD = 0xFFFFFFFF
HALF = 0xFFFF
CHAIN_START = 0x9E3779B9  # the golden ratio's bits: any constant but 0


def _times(words: torch.Tensor, factor: int) -> torch.Tensor:
    """words * factor mod 2**32 for int64 words in [0, 2**32), the factor taken in 16-bit halves (no
    product reaches 2**63, so no device's overflow behaviour matters)."""
    return (words * (factor & HALF) + (((words * (factor >> 16)) & HALF) << 16)) & WORD


def hash32(words: torch.Tensor) -> torch.Tensor:
    """`lowbias32`: a 32-bit integer hash, for int64 tensors of values in [0, 2**32)."""
    words = words ^ (words >> 16)
    words = _times(words, 0x7FEB352D)
    words = words ^ (words >> 15)
    words = _times(words, 0x846CA68B)
    return words ^ (words >> 16)


def noise_key(seed: int, window: int) -> int:
    """The key of a track's window: its random stream depends on nothing else. (The chain starts
    from a constant, not 0, which `hash32` keeps at 0.)"""
    key = torch.tensor(CHAIN_START, dtype=torch.long)
    for word in (seed >> 32, seed & WORD, window):
        key = hash32(key ^ word)
    return int(key)


def gumbel_noise(
    keys: torch.Tensor, positions: torch.Tensor, codebooks: int, vocabulary: int
) -> torch.Tensor:
    """Gumbel noise (rows, codebooks, vocabulary), float64, for rows of `keys` (rows,) at `positions`
    (rows,). Each (position, codebook, token) of a window has its own counter below 2**32, so within
    a row no two draws share a hash input (`hash32` is a bijection); the second round, keyed again,
    keeps rows of different keys from sharing noise where their first-round inputs meet."""
    device = keys.device
    draws = (positions[:, None] * codebooks + torch.arange(codebooks, device=device)) * vocabulary
    counters = draws[:, :, None] + torch.arange(vocabulary, device=device)
    keys = keys[:, None, None]
    bits = hash32(hash32(counters ^ keys) ^ keys)
    uniform = (bits.double() + 0.5) / 2.0**32
    return -torch.log(-torch.log(uniform))


@dataclass
class SamplingRows:
    """Each row's sampling settings, as device tensors of one value per row."""

    guidance: torch.Tensor  # float32: the classifier-free guidance scale
    temperature: torch.Tensor  # float64; 0 is greedy
    top_k: torch.Tensor  # long; 0 is off
    top_p: torch.Tensor  # float64; 0 is off, and when on it replaces top_k
    key: torch.Tensor  # long: `noise_key` of the row's seed and window

    @classmethod
    def empty(cls, rows: int, device: torch.device) -> "SamplingRows":
        def zeros(dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(rows, dtype=dtype, device=device)

        return cls(
            zeros(torch.float32),
            zeros(torch.float64),
            zeros(torch.long),
            zeros(torch.float64),
            zeros(torch.long),
        )

    def set(self, row: int, request: MusicGenRequest, key: int) -> None:
        """Row `row` samples as `request` asks, from the stream of `key`."""
        values = (request.guidance_scale, request.temperature, request.top_k, request.top_p, key)
        for tensor, value in zip(self.tensors(), values, strict=True):
            tensor[row] = value

    def move(self, source: int, target: int) -> None:
        for tensor in self.tensors():
            tensor[target] = tensor[source]

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.guidance, self.temperature, self.top_k, self.top_p, self.key)


def guide(logits: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """(2 * rows, codebooks, vocabulary) logits, conditional and unconditional rows interleaved, to the
    guided (rows, codebooks, vocabulary): uncond + (cond - uncond) * scale, in float32."""
    logits = logits.float()
    conditional, unconditional = logits[0::2], logits[1::2]
    return unconditional + (conditional - unconditional) * guidance[:, None, None]


def sample(guided: torch.Tensor, settings: SamplingRows, positions: torch.Tensor) -> torch.Tensor:
    """One token per (row, codebook) of `guided` logits, each row by its own settings, its noise keyed
    by its `positions` (rows,): the (rows, codebooks) tokens."""
    rows, codebooks, vocabulary = guided.shape
    greedy = settings.temperature <= 0
    temperature = torch.where(greedy, 1.0, settings.temperature)[:, None, None]
    scaled = (guided - guided.amax(dim=-1, keepdim=True)).double() / temperature
    ordered, order = scaled.sort(dim=-1, descending=True)
    # top-k: the k-th largest scaled logit is the lowest kept (ties with it are kept too).
    k = torch.where((settings.top_k <= 0) | (settings.top_k > vocabulary), vocabulary, settings.top_k)
    threshold = ordered.gather(-1, (k - 1)[:, None, None].expand(rows, codebooks, 1))
    keep_k = ordered >= threshold
    # top-p: the likeliest tokens until their probability reaches p.
    probabilities = ordered.softmax(dim=-1)
    keep_p = probabilities.cumsum(dim=-1) - probabilities <= settings.top_p[:, None, None]
    keep = torch.where((settings.top_p > 0)[:, None, None], keep_p, keep_k)
    noise = gumbel_noise(settings.key, positions, codebooks, vocabulary)
    perturbed = (ordered + noise.gather(-1, order)).masked_fill(~keep, -torch.inf)
    drawn = order.gather(-1, perturbed.argmax(dim=-1, keepdim=True)).squeeze(-1)
    return torch.where(greedy[:, None], guided.argmax(dim=-1), drawn)
