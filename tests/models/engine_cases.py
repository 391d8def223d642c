"""Shared inputs for the engine tests."""

TEXTS = [
    "hello world",
    "the quick brown fox jumps over the lazy dog near the riverbank",
    "a",
    "John Smith moved from Berlin to Paris in 2019 and works at Acme Corporation",
    "unbelievably",
    " ".join(["token"] * 60),
]
