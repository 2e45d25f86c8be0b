"""Random-weight models with the real checkpoints' architecture (SDXL base 1.0, MusicGen-melody),
for measuring real-size speed where the weights cannot be downloaded. Built on the GPU when there
is one (seconds) and saved in half precision; on a CPU the build takes minutes and ~15 GB of memory."""

from pathlib import Path

import torch

from leap_ray.tiny.musicgen import MELODY, write_musicgen
from leap_ray.tiny.sdxl import BASE_1_0, build_sdxl


def write_full_size_models(directory: Path) -> dict[str, Path]:
    """Writes (once) `sdxl` and `musicgen-melody` under `directory` and returns their folders."""
    directory = Path(directory)
    folders = {"sdxl": directory / "sdxl", "musicgen-melody": directory / "musicgen-melody"}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        if not (folders["sdxl"] / "model_index.json").exists():
            build_sdxl(BASE_1_0).to(torch.float16).save_pretrained(folders["sdxl"], safe_serialization=True)
        if not (folders["musicgen-melody"] / "config.json").exists():
            write_musicgen(folders["musicgen-melody"], MELODY, melody=True)
    return folders
