"""The timing rule of export_cpu.py and tflite_android.py: the median of `repeats` runs after a warm-up (light to
import: tflite_android's runs in fresh processes measure their memory from it)."""

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
