"""Tiny question/answer pairs that the training tests teach the tiny model (shared by several test files)."""

QA = [
    ("what colour is the sky", "the sky is blue"),
    ("what do cats say", "cats say meow"),
    ("name a fruit", "an apple is a fruit"),
    ("how many legs has a dog", "a dog has four legs"),
    ("where do fish live", "fish live in the water of the sea and the river"),
    ("what is ice", "ice is frozen water"),
    ("when is it dark", "it is dark at night"),
    ("what do birds do", "birds fly over the trees and sing in the morning"),
]
