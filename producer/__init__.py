"""The producer service: `anomstream produce`, a thin entry point over :mod:`anomstream.producer`."""
