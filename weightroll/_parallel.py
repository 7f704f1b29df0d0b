"""A small thread pool for numpy and zlib work, which release the GIL."""

import concurrent.futures
import os

MAX_WORKERS = 8


def parallel_map(function, items):
    """`list(map(function, items))` on up to one thread per core, results in order."""
    items = list(items)
    workers = min(len(items), os.cpu_count() or 1, MAX_WORKERS)
    if workers <= 1:
        return [function(item) for item in items]
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items))
