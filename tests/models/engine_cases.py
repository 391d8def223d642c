"""Shared inputs and helpers for the engine tests."""

import threading

TEXTS = [
    "hello world",
    "the quick brown fox jumps over the lazy dog near the riverbank",
    "a",
    "John Smith moved from Berlin to Paris in 2019 and works at Acme Corporation",
    "unbelievably",
    " ".join(["token"] * 60),
]


def classify_concurrently(engine, jobs: list[list[str]], timeout: float = 120) -> dict[int, list]:
    """Each job's probabilities, every job submitted from a thread of its own at
    the same moment, as a worker's task threads do."""
    results: dict[int, list] = {}
    barrier = threading.Barrier(len(jobs))

    def call(i):
        barrier.wait()
        results[i] = [o.probs for o in engine.classify(jobs[i])]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return results
