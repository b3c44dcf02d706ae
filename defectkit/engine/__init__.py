from . import settings  # noqa: F401  (declares the config sections)
