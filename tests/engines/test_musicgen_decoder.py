"""The static-cache decoder step equals the model's own forward (transformers), for the text model
(cross-attention, a padded text) and the melody model (a chroma + text prefix), with rows at
different positions sharing a step."""

import pytest
import torch
from transformers import MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

from leap_ray.engines.musicgen_decoder import StaticDecoder

TOLERANCE = 5e-4  # on logits, CPU float32: other reduction orders than transformers'


@pytest.fixture(scope="module", params=["musicgen", "musicgen-melody"])
def model(request, tiny_models) -> torch.nn.Module:
    model_class = (
        MusicgenMelodyForConditionalGeneration
        if request.param == "musicgen-melody"
        else MusicgenForConditionalGeneration
    )
    return model_class.from_pretrained(tiny_models[request.param]).eval()


def test_rows_at_different_positions_equal_the_models_own_forward(model):
    generator = torch.Generator().manual_seed(0)
    codebooks, hidden = model.decoder.config.num_codebooks, model.decoder.config.hidden_size
    codes = torch.randint(0, model.decoder.config.vocab_size, (2, codebooks, 10), generator=generator)
    states = torch.randn(2, 5, hidden, generator=generator)
    melody = hasattr(model, "audio_enc_to_dec_proj")
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # the second text is padded
    with torch.inference_mode():
        expected = model.decoder(
            input_ids=codes.reshape(2 * codebooks, 10),
            encoder_hidden_states=states,
            encoder_attention_mask=None if melody else mask,
        ).logits.view(2, codebooks, -1, model.decoder.config.vocab_size)[:, :, -10:]
        decoder = StaticDecoder(model, rows=2, capacity=40, cross_capacity=8)
        embeds = decoder.embed(codes[:, :, :3])
        if melody:
            embeds, offset = torch.cat([states, embeds], dim=1), states.shape[1]
        else:
            decoder.set_cross(states, mask)
            offset = 0
        decoder.prefill(embeds)  # both rows through code 2; code 3's logits come from a step
        first = decoder.step(codes[:, :, 3], torch.tensor([offset + 3] * 2))
        assert (first - expected[:, :, 3]).abs().max() < TOLERANCE
        for position in (4, 5):  # the first row alone runs ahead by two codes
            ahead = decoder.step(codes[:1, :, position], torch.tensor([offset + position]))
            assert (ahead - expected[:1, :, position]).abs().max() < TOLERANCE
        for step in range(4):  # then the rows share steps, two codes apart
            at = torch.tensor([6 + step, 4 + step])
            logits = decoder.step(codes[[0, 1], :, at], offset + at)
            for row in (0, 1):
                assert (logits[row] - expected[row, :, int(at[row])]).abs().max() < TOLERANCE
