"""How many MusicGen tracks one GPU holds: the memory plan behind the MusicGen deployment's
`max_batch_size` and `batch_buckets` (serve_config.yaml; the numbers: benchmarks/musicgen_memory.py).

A replica's GPU holds the model's weights, the decoder's static KV cache (`StaticDecoder`) and a
`Reserve`. Only the cache grows with the batch: a running track owns two cache rows (conditional and
unconditional, for classifier-free guidance), each holding every layer's keys and values over the
cache's `capacity` positions, and for the text-only model also its cross-attention keys and values
over the prompt's tokens (and their mask). `capacity` is what a whole window takes (the melody model's
chroma and prompt prefix, then the window's delay pattern) rounded up to LENGTH_STEP, as the engine
sizes it. So the plan is `tracks = (gpu - weights - reserve) // track_bytes`.

Plain functions over a transformers config: no Ray, no GPU, no download (a model's weights are
counted from its config built on the meta device). The engine's window and prompt tokens
(musicgen.WINDOW_S, TEXT_TOKENS) come in as arguments, not imports: the engine sizes its cache with
this module's `window_positions`, so importing the engine here would make a cycle.
"""

from dataclasses import dataclass

import torch
from transformers import (
    MusicgenForConditionalGeneration,
    MusicgenMelodyForConditionalGeneration,
    PreTrainedConfig,
)

from leap_ray.engines.musicgen_decoder import LENGTH_STEP, StaticDecoder

GIB = 1 << 30
ROWS_PER_TRACK = 2  # a conditional and an unconditional row: classifier-free guidance
# Modules `from_pretrained` keeps in float32 when it loads in float16 (T5's `_keep_in_fp32_modules`:
# its feed-forward output projection overflows in half precision); a test holds this to transformers.
FLOAT32_IN_HALF = ("wo",)


def window_positions(prefix_tokens: int, window_frames: int, codebooks: int) -> int:
    """Decoder positions a whole window takes: its prefix (the melody model's chroma and prompt),
    then its delay pattern (the start token, and the frames with codebook k delayed by k), plus one."""
    return prefix_tokens + window_frames + codebooks + 1


def rounded_capacity(positions: int) -> int:
    """The positions a `StaticDecoder` made for `positions` holds: rounded up to LENGTH_STEP."""
    return -(-positions // LENGTH_STEP) * LENGTH_STEP


@dataclass(frozen=True)
class CacheShape:
    """What sizes a MusicGen decoder's cache, and the bytes it takes per track."""

    layers: int
    heads: int
    head_dim: int
    codebooks: int
    window_frames: int
    text_tokens: int  # the prompt tokens the cache holds (the engine's TEXT_TOKENS)
    chroma_length: int | None  # the melody model's chroma positions; None: the text-only model
    dtype_bytes: int

    @classmethod
    def from_config(
        cls, config: PreTrainedConfig, *, window_s: float, text_tokens: int, dtype: torch.dtype
    ) -> "CacheShape":
        """The shape of a `Musicgen(Melody)Config`'s cache, for windows of `window_s` seconds (the
        engine's WINDOW_S) and prompts of `text_tokens` tokens (its TEXT_TOKENS), in `dtype`."""
        decoder = config.decoder
        melody = config.model_type == "musicgen_melody"
        return cls(
            layers=decoder.num_hidden_layers,
            heads=decoder.num_attention_heads,
            head_dim=decoder.hidden_size // decoder.num_attention_heads,
            codebooks=decoder.num_codebooks,
            window_frames=round(window_s * config.audio_encoder.frame_rate),
            text_tokens=text_tokens,
            chroma_length=config.chroma_length if melody else None,
            dtype_bytes=dtype.itemsize,
        )

    @property
    def melody(self) -> bool:
        return self.chroma_length is not None

    @property
    def prefix_tokens(self) -> int:
        """Decoder positions before the codes: the melody model's chroma, then the prompt."""
        return self.chroma_length + self.text_tokens if self.melody else 0

    @property
    def capacity(self) -> int:
        return rounded_capacity(window_positions(self.prefix_tokens, self.window_frames, self.codebooks))

    @property
    def cross_capacity(self) -> int:
        """The text-only model's cross-attention positions: the prompt's tokens (not rounded)."""
        return 0 if self.melody else self.text_tokens

    @property
    def row_bytes(self) -> int:
        """One cache row: keys and values of every layer over the capacity and the cross positions,
        and the cross-attention mask (one value per cross position)."""
        per_position = self.layers * 2 * self.heads * self.head_dim * self.dtype_bytes
        return per_position * (self.capacity + self.cross_capacity) + self.cross_capacity * self.dtype_bytes

    @property
    def track_bytes(self) -> int:
        return ROWS_PER_TRACK * self.row_bytes

    @property
    def prompt_tokens_held(self) -> int:
        """The longest prompt, in tokens, that this cache holds. The melody model's prompt may also
        fill what the rounding of its capacity leaves. The engine refuses a longer prompt, naming it."""
        if not self.melody:
            return self.text_tokens
        return self.capacity - window_positions(self.chroma_length, self.window_frames, self.codebooks)


@dataclass(frozen=True)
class Reserve:
    """GPU memory a MusicGen replica needs besides its weights and its KV cache; the defaults are for
    half precision on a Hopper GPU and tracks up to 60 s (the default limit)."""

    # The CUDA context, cuBLAS/cuDNN handles and the kernels' code live outside PyTorch's allocator:
    # about 0.5 GiB on Hopper under CUDA 12 (lazy module loading); 1 GiB leaves room for more kernels.
    context_bytes: int = GIB
    # What PyTorch allocates beyond weights and cache, one job at a time on the replica's thread.
    # Recorded musicgen-melody runs on an H200 (an older engine) peaked 0.8-1.8 GiB above the plan's
    # weights and cache with CUDA graphs, up to 2.8 GiB eager. Counted at full size on the meta device
    # (benchmarks/musicgen_memory.py, which also reads that record): EnCodec decoding a 60 s track
    # 0.9 GiB (it grows with the track), a track's prefill 0.1, a step of 61 tracks 0.04; the running
    # tracks' codes and settings (musicgen_rows.TrackRows) are 50 KB a track. 3 GiB covers the most
    # recorded, and leaves room for library workspaces (cuDNN's for EnCodec's convolutions).
    working_bytes: int = 3 * GIB
    # The caching allocator's reserved-but-unused memory (blocks split by transients), which peaks of
    # allocated memory do not show.
    fragmentation: float = 0.05

    def bytes_for(self, gpu_bytes: int) -> int:
        return self.context_bytes + self.working_bytes + round(self.fragmentation * gpu_bytes)


@dataclass(frozen=True)
class MemoryPlan:
    """Tracks of one shape that fit one GPU beside the weights and the reserve, and the batch
    buckets (CUDA graphs) for that many."""

    gpu_bytes: int
    weight_bytes: int
    reserve_bytes: int
    track_bytes: int
    tracks: int
    buckets: tuple[int, ...]

    @property
    def cache_bytes(self) -> int:
        return self.tracks * self.track_bytes

    @property
    def spare_bytes(self) -> int:
        """What is left once the cache for `tracks` is made (less than one track's)."""
        return self.gpu_bytes - self.weight_bytes - self.reserve_bytes - self.cache_bytes


def weight_bytes(model: torch.nn.Module) -> int:
    """The bytes of a model's parameters and buffers: what loading it puts on its device."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def decoder_bytes(decoder: StaticDecoder, model: torch.nn.Module) -> int:
    """The bytes a made `StaticDecoder` holds besides `model`'s weights: what `CacheShape.track_bytes`
    plans per track, measured. Every tensor it holds counts (alone or in a list), so that a buffer
    added to the decoder later shows up here, and a plan that misses it fails its test."""
    weights = {tensor.untyped_storage().data_ptr() for tensor in (*model.parameters(), *model.buffers())}
    held = []
    for value in vars(decoder).values():
        held += [
            item for item in (value if isinstance(value, list) else [value]) if isinstance(item, torch.Tensor)
        ]
    return sum(tensor.nbytes for tensor in held if tensor.untyped_storage().data_ptr() not in weights)


def model_on_meta(config: PreTrainedConfig, dtype: torch.dtype) -> torch.nn.Module:
    """A `Musicgen(Melody)ForConditionalGeneration` of `config` on the meta device (shapes, no
    storage), in the dtypes `from_pretrained(dtype=dtype)` gives: the weights of a model that cannot
    be downloaded are counted from it."""
    model_class = (
        MusicgenMelodyForConditionalGeneration
        if config.model_type == "musicgen_melody"
        else MusicgenForConditionalGeneration
    )
    with torch.device("meta"):
        model = model_class(config).to(dtype)
    if dtype == torch.float16:
        for name, module in model.named_modules():
            if name.rpartition(".")[2] in FLOAT32_IN_HALF:
                module.float()
    return model


def max_tracks(gpu_bytes: int, weights: int, track_bytes: int, reserve_bytes: int) -> int:
    """The most tracks whose cache fits beside the weights and the reserve (0: not even one)."""
    return max(0, (gpu_bytes - weights - reserve_bytes) // track_bytes)


def batch_buckets(tracks: int) -> tuple[int, ...]:
    """CUDA graph buckets for batches up to `tracks`: the powers of two below it, and itself. A batch
    runs padded up to the next bucket: fewer than twice its tracks, with few graphs to capture."""
    powers = tuple(1 << exponent for exponent in range(tracks.bit_length()) if 1 << exponent < tracks)
    return (*powers, tracks) if tracks else ()


def plan(shape: CacheShape, weights: int, gpu_bytes: int, reserve: Reserve | None = None) -> MemoryPlan:
    """The plan for one GPU of `gpu_bytes`, a model of `weights` bytes and caches of `shape`."""
    reserve_bytes = (reserve or Reserve()).bytes_for(gpu_bytes)
    tracks = max_tracks(gpu_bytes, weights, shape.track_bytes, reserve_bytes)
    return MemoryPlan(
        gpu_bytes=gpu_bytes,
        weight_bytes=weights,
        reserve_bytes=reserve_bytes,
        track_bytes=shape.track_bytes,
        tracks=tracks,
        buckets=batch_buckets(tracks),
    )
