"""The timing rules of the benchmarks: the median of `repeats` runs after a warm-up (export_cpu.py, tflite_android.py),
and round-robin over variants (inference_cpu.py, runtimes_cpu.py). Light to import: tflite_android's runs in fresh
processes measure their memory from it."""

import statistics
import time


def median_seconds(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_round_robin(variants: dict, repeats: int) -> dict:
    """{name: [seconds, ...]}: two warm-up calls each (tracing, compilation, caches), then round-robin."""
    times = {name: [] for name in variants}
    for run in variants.values():
        run()
        run()
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times
