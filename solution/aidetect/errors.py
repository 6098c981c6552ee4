"""Errors a user can act on: each names the file, column or row at fault."""


class PipelineError(Exception):
    """A problem with the input or the artifacts, stated for the user."""


class DataError(PipelineError):
    """The data folder does not keep the data contract."""


class DecodeError(PipelineError):
    """One image's bytes could not be turned into pixels."""
