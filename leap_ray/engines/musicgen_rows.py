"""The running tracks' state on the device, and the token step over all of them that never waits for
the host: each track's window of codes (its delay pattern, filled in as tokens are drawn), the
position it samples next, its decoder offset and its sampling settings live in device buffers, one
row per running track. A step reads every row's last codes, runs the decoder, guides, samples
(leap_ray.engines.musicgen_sampling) and writes the drawn codes back, all tensor operations: on a
GPU, the step is one CUDA graph per (bucket of rows, attention span), captured once and replayed.

The host learns nothing from a step: positions move on by one per step, so it knows from its own
counts when a window ends, and reads a track's codes back only then (and, for a streamed track, at
each piece of audio it sends)."""

import logging
from collections.abc import Callable

import torch

from leap_ray.api.musicgen import MusicGenRequest
from leap_ray.engines.musicgen_decoder import StaticDecoder
from leap_ray.engines.musicgen_sampling import WORD, SamplingRows, guide, sample

logger = logging.getLogger(__name__)
CopyOut = Callable[[], Callable[[], torch.Tensor]]
"""Starts copying a row's codes to the host; gives the call that waits for them (`TrackRows.copy_out`)."""


class StepGraphs:
    """A step over fixed buffers captured as a CUDA graph once per key, then replayed; without CUDA
    graphs the step simply runs. The step must be idempotent (its warm-up runs repeat it). A key whose
    capture failed runs eagerly from then on: it is not captured again on every step."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph | None] = {}
        self.pool = torch.cuda.graph_pool_handle() if enabled else None

    def run(self, key: tuple[int, int], step: Callable[[], None]) -> None:
        if self.enabled and key not in self.graphs:
            self.graphs[key] = self._capture(key, step)
        graph = self.graphs.get(key) if self.enabled else None
        if graph is None:
            step()
        else:
            graph.replay()

    def _capture(self, key: tuple[int, int], step: Callable[[], None]) -> torch.cuda.CUDAGraph | None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up runs, off the capture (library workspaces are made here)
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                step()
        except Exception:
            logger.exception(
                "capturing the step of %s tracks over %s positions failed: it runs eagerly", *key
            )
            return None
        return graph


class TrackRows:
    """Row i holds running track i, whose decoder cache rows are 2i (conditional) and 2i + 1
    (unconditional). Rows past the running tracks hold nothing a track needs: a padded step may
    write there."""

    def __init__(
        self, decoder: StaticDecoder, pad_token: int, window_length: int, buckets: list[int]
    ) -> None:
        """`window_length`: the positions of the longest window's delay pattern; `buckets`: the track
        counts whose steps are CUDA graphs (none: steps run eagerly). Rows start as padding (never -1,
        "to be drawn"), so that a padded step over rows no track has used reads valid codes."""
        tracks, device = decoder.rows // 2, decoder.device
        self.decoder, self.codebooks, self.length = decoder, len(decoder.embed_tokens), window_length
        self.codes = torch.full(
            (tracks, self.codebooks, window_length), pad_token, dtype=torch.long, device=device
        )
        self.position = torch.ones(tracks, dtype=torch.long, device=device)  # the position sampled next
        self.offset = torch.zeros(tracks, dtype=torch.long, device=device)  # decoder position of code 0
        self.settings = SamplingRows.empty(tracks, device)
        self.buckets = sorted(buckets)
        self.graphs = StepGraphs(bool(buckets) and device.type == "cuda")
        vocabulary = decoder.heads[0].out_features
        if window_length * self.codebooks * vocabulary > WORD:  # the sampler's counters must stay distinct
            raise ValueError(f"a window of {window_length} positions is too long for the sampler's counters")

    def start(
        self, row: int, pattern: torch.Tensor, position: int, offset: int, request: MusicGenRequest, key: int
    ) -> None:
        """Row `row` takes a window: its (codebooks, positions) delay pattern, next position, offset.
        The row's codes are written in one copy: a row half written (all -1) would feed the embedding
        an invalid code in a padded step."""
        codes = torch.full((self.codebooks, self.length), -1, dtype=torch.long)
        codes[:, : pattern.shape[1]] = pattern
        self.codes[row] = codes.to(self.codes.device)
        self.position[row], self.offset[row] = position, offset
        self.settings.set(row, request, key)

    def move(self, source: int, target: int) -> None:
        """Row `source`'s state (not its cache rows: the decoder moves those) to row `target`."""
        for tensor in (self.codes, self.position, self.offset):
            tensor[target] = tensor[source]
        self.settings.move(source, target)

    def read(self, row: int, positions: int) -> torch.Tensor:
        """The row's first `positions` codes, on the host (this waits for the device)."""
        return self.codes[row, :, :positions].cpu()

    def copy_out(self, row: int, positions: int) -> Callable[[], torch.Tensor]:
        """The row's first `positions` codes as they are once the steps queued so far are done, copied
        to the host without waiting for them: the returned call (from any thread) waits and gives them."""
        codes = self.codes[row, :, :positions]
        if codes.device.type != "cuda":
            copied = codes.clone()
            return lambda: copied
        host = torch.empty(codes.shape, dtype=codes.dtype, pin_memory=True)
        host.copy_(codes, non_blocking=True)
        copied_event = torch.cuda.Event()
        copied_event.record()

        def wait() -> torch.Tensor:
            copied_event.synchronize()
            return host

        return wait

    def step(self, first: int, count: int, span: int, whole: bool) -> None:
        """One token for rows first..first + count, attending over `span` positions. A step over every
        running row (`whole`) runs padded to a bucket, replaying its graph on a GPU; more rows than the
        largest bucket run eagerly."""
        bucket = next((bucket for bucket in self.buckets if bucket >= count), None)
        if whole and bucket is not None and self.graphs.enabled:
            rows = bucket
            self.graphs.run((rows, span), lambda: self._draw(0, rows, span))
        else:
            rows = count
            self._draw(first, count, span)
        # Outside the graph, since a graph's warm-up runs would repeat it; kept in range for padding rows.
        self.position[first : first + rows] = (self.position[first : first + rows] + 1).clamp_(
            max=self.length - 1
        )

    def _draw(self, first: int, count: int, span: int) -> None:
        """Draws the codes at each row's position and writes them where the pattern asks for one (-1)."""
        at = slice(first, first + count)
        position = self.position[at]
        previous = self.codes[at].gather(2, (position - 1).view(-1, 1, 1).expand(-1, self.codebooks, 1))
        previous = previous.clamp_(min=0)  # a guard: a real row never holds -1 there
        decoder_at = (self.offset[at] + position - 1).repeat_interleave(2)
        logits = self.decoder.forward_step(
            previous[:, :, 0].repeat_interleave(2, dim=0), decoder_at, span, 2 * first
        )
        settings = SamplingRows(*(tensor[at] for tensor in self.settings.tensors()))
        drawn = sample(guide(logits, settings.guidance), settings, position)
        here = position.view(-1, 1, 1).expand(-1, self.codebooks, 1)
        column = self.codes[at].gather(2, here)
        self.codes[at].scatter_(2, here, torch.where(column == -1, drawn[:, :, None], column))
