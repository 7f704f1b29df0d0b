"""A small thread pool for numpy and zlib work, which release the GIL."""

import concurrent.futures
import os

MAX_WORKERS = 8


def parallel_map(function, items):
    """`list(map(function, items))` on up to one thread per core, results in order."""
    return list(parallel_results(function, items))


def parallel_results(function, items):
    """`parallel_map`'s results one at a time, in order, each as soon as it
    and those before it are ready: the caller works on the first ones while
    the threads work on the rest."""
    items = list(items)
    workers = min(len(items), os.cpu_count() or 1, MAX_WORKERS)
    if workers <= 1:
        yield from map(function, items)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(function, items)
