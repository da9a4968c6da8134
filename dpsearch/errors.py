"""The data and model errors, apart from the code that raises them: the CLI catches them without importing torch or
diffusers (importing those takes seconds, and `dpsearch --help` needs neither)."""


class DataError(RuntimeError):
    """A dataset is missing, corrupt, or does not have the expected shape."""


class ModelError(RuntimeError):
    """A model directory is missing, incomplete or corrupt."""
