"""The trainer service: `anomstream train` and `anomstream models`, thin entry points over the library."""
