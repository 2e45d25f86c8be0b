"""Tiny random-weight MusicGen models (text-only and melody) with the real models' layout, built offline
(and, with MELODY, one of facebook/musicgen-melody's size for speed measurements on a GPU).

Like `facebook/musicgen-*`: a T5 text encoder with a sentencepiece unigram tokenizer (trained here,
in memory, on a few sentences), a 32 kHz EnCodec with 4 codebooks at 50 frames per second, and a
decoder over those codebooks. Loadable with plain `from_pretrained`.
"""

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece
import torch
from transformers import (
    EncodecConfig,
    GenerationConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    MusicgenMelodyConfig,
    MusicgenMelodyDecoderConfig,
    MusicgenMelodyForConditionalGeneration,
    PreTrainedConfig,
    PreTrainedModel,
    T5Config,
    T5Tokenizer,
)

SAMPLE_RATE = 32_000
# EnCodec's frame rate is sample_rate / prod(upsampling_ratios) = 32000 / 640 = 50 Hz, and its number of
# codebooks is 1000 * bandwidth // (frame_rate * log2(codebook_size)): 4 in both architectures below.
UPSAMPLING_RATIOS = (8, 5, 4, 4)


@dataclass(frozen=True)
class MusicGenArchitecture:
    """Sizes of the text encoder (T5), the audio codec (EnCodec) and the decoder."""

    text: dict[str, Any]
    audio: dict[str, Any]
    decoder: dict[str, Any]

    @property
    def codebook_size(self) -> int:
        return self.audio["codebook_size"]


TINY = MusicGenArchitecture(
    # The text is narrower than the decoder, so the real models' text-to-decoder projection exists.
    text={
        "d_model": 16,
        "d_kv": 4,
        "d_ff": 32,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
    },
    audio={
        "codebook_size": 64,
        "target_bandwidths": [1.2],
        "hidden_size": 16,
        "num_filters": 4,
        "num_lstm_layers": 1,
    },
    decoder={
        "vocab_size": 64,
        "hidden_size": 32,
        "ffn_dim": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        # Trained models have peaked token distributions; at the usual 0.02 a random one is so flat
        # that the prompt and melody would not change what is sampled.
        "initializer_factor": 1.0,
    },
)
# facebook/musicgen-melody: T5-base text encoder, the 32 kHz EnCodec, a 1.5 B decoder.
MELODY = MusicGenArchitecture(
    text={"d_model": 768, "d_kv": 64, "d_ff": 3072, "num_layers": 12, "num_heads": 12, "vocab_size": 32128},
    audio={
        "codebook_size": 2048,
        "target_bandwidths": [2.2],
        "hidden_size": 128,
        "num_filters": 64,
        "num_lstm_layers": 2,
    },
    decoder={
        "vocab_size": 2048,
        "hidden_size": 1536,
        "ffn_dim": 6144,
        "num_hidden_layers": 48,
        "num_attention_heads": 24,
    },
)
TOKENIZER_SENTENCES = (
    "lo-fi music with a soothing melody",
    "an 80s driving pop song with heavy drums and synth pads in the background",
    "a light and cheerful EDM track, with syncopated drums, airy pads, and strong emotions",
    "90s rock song with electric guitar and heavy drums",
    "a grand orchestral arrangement with thunderous percussion, epic brass fanfares and soaring strings",
    "smooth jazz, with a saxophone solo, piano chords, and snare full drums",
    "happy rock, acoustic guitar, upbeat, bass line, country music, folk, calm, slow",
    "ambient electronic soundscape with slow evolving textures and deep bass",
)


def build_t5_tokenizer() -> T5Tokenizer:
    """A sentencepiece unigram vocabulary trained in memory, in T5's id layout (pad 0, eos 1, unk 2)."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TOKENIZER_SENTENCES),
        model_writer=model,
        model_type="unigram",
        vocab_size=120,
        hard_vocab_limit=False,
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def musicgen_config(
    architecture: MusicGenArchitecture, text_vocabulary: int, melody: bool
) -> PreTrainedConfig:
    """The `Musicgen(Melody)Config` of these sizes (a `vocab_size` in `architecture.text` wins over
    `text_vocabulary`, the tokenizer's)."""
    text = T5Config(
        **{"vocab_size": text_vocabulary, **architecture.text},
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    audio = EncodecConfig(
        sampling_rate=SAMPLE_RATE,
        upsampling_ratios=UPSAMPLING_RATIOS,
        use_causal_conv=False,
        normalize=False,
        **architecture.audio,
    )
    special = architecture.codebook_size  # MusicGen's pad and start token: one past the codebook
    decoder = {
        "num_codebooks": 4,
        "max_position_embeddings": 2048,
        "pad_token_id": special,
        "bos_token_id": special,
        "dropout": 0.0,
        **architecture.decoder,
    }
    if melody:
        return MusicgenMelodyConfig(
            text_encoder=text,
            audio_encoder=audio,
            decoder=MusicgenMelodyDecoderConfig(**decoder),
            num_chroma=12,
            chroma_length=235,  # the checkpoint's: 30 s of chroma at 32 kHz with a 4096-sample hop
        )
    return MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=MusicgenDecoderConfig(**decoder))


def _finish(model: PreTrainedModel, codebook_size: int) -> PreTrainedModel:
    # EnCodec starts its codebooks at zero (training fills them), so every code would decode to the
    # same sound: give each code its own random vector.
    for layer in model.audio_encoder.quantizer.layers:
        layer.codebook.embed.normal_()
        layer.codebook.embed_avg.copy_(layer.codebook.embed)
        layer.codebook.cluster_size.fill_(1.0)
    # The checkpoints' sampling defaults (audiocraft's): top-k 250, guidance 3, 30 s windows.
    model.generation_config = GenerationConfig(
        do_sample=True,
        top_k=250,
        guidance_scale=3.0,
        max_length=1500,
        pad_token_id=codebook_size,
        decoder_start_token_id=codebook_size,
        bos_token_id=codebook_size,
    )
    return model.eval()


def build_musicgen(
    architecture: MusicGenArchitecture = TINY, *, melody: bool = False
) -> tuple[PreTrainedModel, T5Tokenizer]:
    """The model (text-only or melody) with random weights, and its tokenizer; the same every call."""
    tokenizer = build_t5_tokenizer()
    config = musicgen_config(architecture, len(tokenizer), melody)
    torch.manual_seed(0)
    model_class = MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration
    return _finish(model_class(config), architecture.codebook_size), tokenizer


def write_musicgen(
    directory: Path, architecture: MusicGenArchitecture = TINY, *, melody: bool = False
) -> Path:
    model, tokenizer = build_musicgen(architecture, melody=melody)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def write_tiny_musicgen(directory: Path) -> Path:
    return write_musicgen(directory)


def write_tiny_musicgen_melody(directory: Path) -> Path:
    return write_musicgen(directory, melody=True)
