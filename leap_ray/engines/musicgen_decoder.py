"""MusicGen's decoder step over a static KV cache, written over the model's own modules (token and
position embeddings, each layer's projections, norms and feed-forward, the heads).

Why our own and not transformers' forward: transformers derives every row's position from one cache
length for the whole batch and grows its cache tensor by tensor, so its step neither takes rows at
different positions nor has the fixed shapes a CUDA graph needs; its cache keyword also changed name
between 5.17 and 5.24. Here:
- the cache is preallocated, (rows, heads, capacity, head_dim) per layer, and a step writes each
  row's key and value at that row's own position (a tensor), so rows at different positions can
  share a step (what continuous batching needs);
- a step attends over the first `span` cache positions, `span` rounded up to a multiple of
  LENGTH_STEP, with positions past each row's own masked out: shapes repeat, so a step (with the
  sampling around it: leap_ray.engines.musicgen_rows) can be captured in a CUDA graph per (rows,
  span) and replayed (MusicGen decoding is one small step per token: eager PyTorch spends most
  of it launching kernels);
- `prefill` runs a whole prefix (the melody model's chroma + text, the window's carried codes but
  the last) for rows that start together, as the model's own forward would; `move_rows` keeps the
  rows in use first when a track in the middle of a running batch leaves.
It equals the model's own forward to float rounding (tests compare the logits).
"""

import torch
import torch.nn.functional as F

LENGTH_STEP = 256  # attention spans are rounded up to this many positions (a graph per span)


class StaticDecoder:
    """The decoder of a `Musicgen(Melody)ForConditionalGeneration` over `rows` cache rows of
    `capacity` positions."""

    def __init__(
        self,
        model: torch.nn.Module,
        rows: int,
        capacity: int,
        *,
        cross_capacity: int = 0,
    ) -> None:
        causal_lm = model.decoder
        inner = causal_lm.model.decoder
        self.embed_tokens = list(inner.embed_tokens)
        self.positions = inner.embed_positions.weights
        self.layers = list(inner.layers)
        self.final_norm = inner.layer_norm
        self.heads = list(causal_lm.lm_heads)
        self.cross = hasattr(self.layers[0], "encoder_attn")  # the text-only model cross-attends
        attention = self.layers[0].self_attn
        self.num_heads, self.head_dim = attention.num_heads, attention.head_dim
        self.rows, self.capacity = rows, -(-capacity // LENGTH_STEP) * LENGTH_STEP
        self.device, self.dtype = self.positions.device, next(causal_lm.parameters()).dtype
        if self.positions.shape[0] < self.capacity:
            inner.embed_positions.make_weights(self.capacity, inner.embed_positions.embedding_dim)
            self.positions = inner.embed_positions.weights
        shape = (rows, self.num_heads, self.capacity, self.head_dim)
        self.keys = [self._zeros(shape) for _ in self.layers]
        self.values = [self._zeros(shape) for _ in self.layers]
        # Cross-attention keys and values live in fixed buffers too, which captured graphs read.
        cross_shape = (rows, self.num_heads, cross_capacity, self.head_dim) if self.cross else (0,)
        self.cross_capacity = cross_capacity
        self.cross_keys = [
            torch.zeros(cross_shape, device=self.device, dtype=self.dtype) for _ in self.layers
        ]
        self.cross_values = [
            torch.zeros(cross_shape, device=self.device, dtype=self.dtype) for _ in self.layers
        ]
        self.cross_mask = self._zeros((rows, 1, 1, cross_capacity))

    def _zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, device=self.device, dtype=self.dtype)

    def span(self, position: int) -> int:
        """The attention span of a step at `position`: the positions up to it, rounded up."""
        return min(self.capacity, (position // LENGTH_STEP + 1) * LENGTH_STEP)

    def set_cross(self, states: torch.Tensor, mask: torch.Tensor, first_row: int = 0) -> None:
        """The text model's encoder states (rows, tokens, hidden) and padding mask (rows, tokens) of
        the cache rows from `first_row`, projected once into every layer's cross-attention keys and
        values."""
        rows, tokens = mask.shape
        at = slice(first_row, first_row + rows)
        for layer, keys, values in zip(self.layers, self.cross_keys, self.cross_values, strict=True):
            keys[at, :, :tokens] = self._split(layer.encoder_attn.k_proj(states))
            values[at, :, :tokens] = self._split(layer.encoder_attn.v_proj(states))
            # Zeros past the text: a row that may attend nowhere averages its values, which must then
            # be the zeros of its (empty) text, as in transformers, not an earlier window's.
            keys[at, :, tokens:], values[at, :, tokens:] = 0, 0
        allowed = torch.zeros(rows, self.cross_capacity, dtype=torch.bool, device=self.device)
        allowed[:, :tokens] = mask.bool()
        self.cross_mask[at] = _additive(allowed.view(rows, 1, 1, -1), self.dtype)

    def move_rows(self, source: int, target: int, count: int) -> None:
        """Copies `count` cache rows (their keys, values and text) from `source` to `target`, so that
        the rows in use stay the first ones when a track in the middle leaves."""
        if source == target:
            return
        for tensors in (self.keys, self.values, self.cross_keys, self.cross_values):
            for tensor in tensors:
                if tensor.dim() > 1:
                    tensor[target : target + count] = tensor[source : source + count]
        self.cross_mask[target : target + count] = self.cross_mask[source : source + count]

    def _split(self, states: torch.Tensor) -> torch.Tensor:
        """(rows, length, hidden) to (rows, heads, length, head_dim)."""
        return states.view(*states.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(rows, codebooks, length) codes to (rows, length, hidden): the codebooks' embeddings summed."""
        return sum(embedding(tokens[:, k]) for k, embedding in enumerate(self.embed_tokens))

    def prefill(self, embeds: torch.Tensor, first_row: int = 0) -> None:
        """Runs (rows, length, hidden) embeddings at positions 0.. into the cache rows from
        `first_row` (the logits of their last position come from the next `forward_step`, fed that
        code)."""
        rows, length, _ = embeds.shape
        if length == 0:
            return
        at = slice(first_row, first_row + rows)
        positions = torch.arange(length, device=self.device)
        causal = positions[None, :] <= positions[:, None]
        hidden = embeds + self.positions[positions].to(self.dtype)
        for index, layer in enumerate(self.layers):
            keys, values = self.keys[index], self.values[index]
            residual, normed = hidden, layer.self_attn_layer_norm(hidden)
            keys[at, :, :length] = self._split(layer.self_attn.k_proj(normed))
            values[at, :, :length] = self._split(layer.self_attn.v_proj(normed))
            query = self._split(layer.self_attn.q_proj(normed))
            attended = F.scaled_dot_product_attention(
                query, keys[at, :, :length], values[at, :, :length], attn_mask=causal
            )
            hidden = residual + layer.self_attn.out_proj(attended.transpose(1, 2).reshape(hidden.shape))
            hidden = self._after_self_attention(index, layer, hidden, at)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, first_row: int = 0) -> torch.Tensor:
        """`forward_step` over the span its positions need (read from the device: for tests and tools)."""
        return self.forward_step(tokens, positions, self.span(int(positions.max())), first_row)

    def forward_step(
        self, tokens: torch.Tensor, positions: torch.Tensor, span: int, first_row: int = 0
    ) -> torch.Tensor:
        """One token per row: (rows, codebooks) codes, each row at its own position (rows,), attending
        over the first `span` positions; the logits (rows, codebooks, vocabulary). Rows are the cache
        rows from `first_row`. Only tensor operations: it may run inside a captured CUDA graph."""
        rows = tokens.shape[0]
        at = slice(first_row, first_row + rows)
        row_index = torch.arange(first_row, first_row + rows, device=self.device)
        visible = torch.arange(span, device=self.device)[None, :] <= positions[:, None]
        mask = _additive(visible.view(rows, 1, 1, span), self.dtype)
        hidden = self.embed(tokens[:, :, None]) + self.positions[positions][:, None].to(self.dtype)
        for index, layer in enumerate(self.layers):
            keys, values = self.keys[index], self.values[index]
            residual, normed = hidden, layer.self_attn_layer_norm(hidden)
            keys[row_index, :, positions] = layer.self_attn.k_proj(normed)[:, 0].view(
                rows, self.num_heads, -1
            )
            values[row_index, :, positions] = layer.self_attn.v_proj(normed)[:, 0].view(
                rows, self.num_heads, -1
            )
            query = self._split(layer.self_attn.q_proj(normed))
            attended = F.scaled_dot_product_attention(
                query, keys[at, :, :span], values[at, :, :span], attn_mask=mask
            )
            hidden = residual + layer.self_attn.out_proj(attended.transpose(1, 2).reshape(hidden.shape))
            hidden = self._after_self_attention(index, layer, hidden, at)
        return self._logits(hidden[:, -1])

    def _after_self_attention(
        self, index: int, layer: torch.nn.Module, hidden: torch.Tensor, at: slice
    ) -> torch.Tensor:
        """The rest of a layer: cross-attention (text model), then the feed-forward block."""
        if self.cross:
            attention, normed = layer.encoder_attn, layer.encoder_attn_layer_norm(hidden)
            attended = F.scaled_dot_product_attention(
                self._split(attention.q_proj(normed)),
                self.cross_keys[index][at],
                self.cross_values[index][at],
                attn_mask=self.cross_mask[at],
            )
            hidden = hidden + attention.out_proj(attended.transpose(1, 2).reshape(hidden.shape))
        normed = layer.final_layer_norm(hidden)
        return hidden + layer.fc2(layer.activation_fn(layer.fc1(normed)))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.final_norm(hidden)
        return torch.stack([head(hidden) for head in self.heads], dim=1)


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as the additive one transformers uses: 0 where allowed, the dtype's minimum
    elsewhere (not -inf, so that a row that may attend nowhere, an unconditional row's empty text,
    averages its values instead of turning to NaN)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )
