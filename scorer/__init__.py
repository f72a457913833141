"""The scorer service: `anomstream score` and `anomstream tail`, thin entry points over the library."""
