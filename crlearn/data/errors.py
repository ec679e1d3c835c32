"""The error bad input data raises: one type, whose message names the file (or folder) and the problem."""


class DataError(ValueError):
    """Bad input data. The message names the file (or folder) and the problem."""
