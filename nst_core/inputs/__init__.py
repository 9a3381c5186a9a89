"""Inputs: images decoded, preprocessed the CS231n way and hashed (``images``); the colour transforms of
``original_colors`` (``colour``)."""
