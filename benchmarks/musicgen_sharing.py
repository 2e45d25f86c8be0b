"""Should tracks of different durations share one decoding call? The engine runs them together
(each row stops at its own length, padded as when alone); this measures that against one call per
duration, for the same requests.

    python -m benchmarks.musicgen_sharing [--full-size]
"""

import time
from collections.abc import Callable

from benchmarks.common import MODEL_CPUS, arguments, models, print_table, write_results

MIXES = {"1+2 s": (1.0, 2.0), "1+2+4+8 s": (1.0, 2.0, 4.0, 8.0), "2+2+2+8 s": (2.0, 2.0, 2.0, 8.0)}
REPEATS = 3


def main() -> None:
    from leap_ray.api.musicgen import MusicGenRequest
    from leap_ray.engines.contract import generate
    from leap_ray.engines.musicgen import MusicGenEngine

    args = arguments(__doc__)
    engine = MusicGenEngine(models(args)["musicgen-melody"], threads=MODEL_CPUS)

    def best_of(run: Callable[[], object]) -> float:
        times = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        return min(times)

    rows = []
    for name, durations in MIXES.items():
        requests = [MusicGenRequest(prompt="lo-fi beat", duration=d, seed=i) for i, d in enumerate(durations)]
        generate(engine, requests)  # warm up
        shared = best_of(lambda r=requests: generate(engine, r))
        split = best_of(lambda r=requests: [generate(engine, [one]) for one in r])
        rows.append(
            {"durations": name, "shared_s": shared, "split_s": split, "split_over_shared": split / shared}
        )
    print_table("MusicGen: one call for mixed durations vs one call each", rows)
    write_results("musicgen_sharing", {"rows": rows})


if __name__ == "__main__":
    main()
