"""Outputs: files written atomically (``files``) and the recipe every picture carries (``recipe``)."""
