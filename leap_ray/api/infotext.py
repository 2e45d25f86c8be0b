"""AUTOMATIC1111's "infotext": an image's generation parameters as the web UI writes them into its
files (`modules/processing.py: create_infotext`) and as the tools around it (its PNG Info tab,
Civitai, ComfyUI's and InvokeAI's importers) read them:

    a lighthouse at dawn
    Negative prompt: blurry
    Steps: 30, Sampler: Euler, CFG scale: 7.0, Seed: 1, Size: 1024x1024, Model: my-model

The prompt, the negative prompt's line when there is one, then `Key: value` pairs joined by ", ",
a value quoted as JSON when it holds a comma, a colon or a line break (A1111's `quote`); pairs
without a value are left out."""

import json
from collections.abc import Mapping

# Our schedulers under the names A1111 gives the same samplers.
SAMPLER_NAMES = {"euler": "Euler", "euler_ancestral": "Euler a", "dpmpp_2m": "DPM++ 2M", "ddim": "DDIM"}


def quote(value: object) -> str:
    """A value as A1111 writes it in a pair: as is, or as a JSON string when it holds , : or a newline."""
    text = str(value)
    if not any(mark in text for mark in ",:\n"):
        return text
    return json.dumps(text, ensure_ascii=False)


def infotext(prompt: str, negative_prompt: str, pairs: Mapping[str, object | None]) -> str:
    """The infotext of one image: its prompt, negative prompt and parameter pairs (None: left out)."""
    line = ", ".join(f"{key}: {quote(value)}" for key, value in pairs.items() if value is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}".strip()
