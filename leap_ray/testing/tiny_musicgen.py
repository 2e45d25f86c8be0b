"""Tiny random-weight MusicGen models (text-only and melody) with the real models' layout, built offline.

Like `facebook/musicgen-*`: a T5 text encoder with a sentencepiece unigram tokenizer (trained here,
in memory, on a few sentences), a 32 kHz EnCodec with 4 codebooks at 50 frames per second, and a
decoder over those codebooks. Loadable with plain `from_pretrained`.
"""

import io
from pathlib import Path

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
    PreTrainedModel,
    T5Config,
    T5Tokenizer,
)

CODEBOOK_SIZE = 64
SAMPLE_RATE = 32_000
# EnCodec's frame rate is sample_rate / prod(upsampling_ratios) = 32000 / 640 = 50 Hz, and its number of
# codebooks is 1000 * bandwidth // (frame_rate * log2(codebook_size)) = 1200 // 300 = 4.
UPSAMPLING_RATIOS = (8, 5, 4, 4)
BANDWIDTH_KBPS = 1.2
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


def _sub_configs(tokenizer: T5Tokenizer) -> tuple[T5Config, EncodecConfig]:
    text = T5Config(
        vocab_size=len(tokenizer),
        d_model=16,  # narrower than the decoder: the real models' text-to-decoder projection exists
        d_kv=4,
        d_ff=32,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    audio = EncodecConfig(
        sampling_rate=SAMPLE_RATE,
        upsampling_ratios=UPSAMPLING_RATIOS,
        target_bandwidths=[BANDWIDTH_KBPS],
        codebook_size=CODEBOOK_SIZE,
        hidden_size=16,
        num_filters=4,
        num_lstm_layers=1,
        use_causal_conv=False,
        normalize=False,
    )
    return text, audio


def _decoder_settings() -> dict[str, object]:
    return {
        "vocab_size": CODEBOOK_SIZE,
        "num_codebooks": 4,
        "hidden_size": 32,
        "ffn_dim": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 4096,
        "pad_token_id": CODEBOOK_SIZE,
        "bos_token_id": CODEBOOK_SIZE,
        "dropout": 0.0,
        # Trained models have peaked token distributions; at the usual 0.02 a random one is so flat
        # that the prompt and melody would not change what is sampled.
        "initializer_factor": 1.0,
    }


def _finish(model: PreTrainedModel) -> PreTrainedModel:
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
        pad_token_id=CODEBOOK_SIZE,
        decoder_start_token_id=CODEBOOK_SIZE,
        bos_token_id=CODEBOOK_SIZE,
    )
    return model.eval()


def build_tiny_musicgen() -> tuple[MusicgenForConditionalGeneration, T5Tokenizer]:
    tokenizer = build_t5_tokenizer()
    text, audio = _sub_configs(tokenizer)
    torch.manual_seed(0)
    decoder = MusicgenDecoderConfig(**_decoder_settings())
    config = MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)
    return _finish(MusicgenForConditionalGeneration(config)), tokenizer


def build_tiny_musicgen_melody() -> tuple[MusicgenMelodyForConditionalGeneration, T5Tokenizer]:
    tokenizer = build_t5_tokenizer()
    text, audio = _sub_configs(tokenizer)
    torch.manual_seed(0)
    config = MusicgenMelodyConfig(
        text_encoder=text,
        audio_encoder=audio,
        decoder=MusicgenMelodyDecoderConfig(**_decoder_settings()),
        num_chroma=12,
        chroma_length=235,  # the checkpoint's: 30 s of chroma at 32 kHz with a 4096-sample hop
    )
    return _finish(MusicgenMelodyForConditionalGeneration(config)), tokenizer


def _write(built: tuple[PreTrainedModel, T5Tokenizer], directory: Path) -> Path:
    model, tokenizer = built
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def write_tiny_musicgen(directory: Path) -> Path:
    return _write(build_tiny_musicgen(), directory)


def write_tiny_musicgen_melody(directory: Path) -> Path:
    return _write(build_tiny_musicgen_melody(), directory)
