"""The error root of stage one (`pipeline/`): datasets, concept sets, the encoder, `embed`.

Every error a user can cause in stage one is a `PipelineError` (a `core.errors.ClipCbmError`),
so the CLI prints its message without a traceback; anything else is a bug and keeps its
traceback. The specific classes live beside the code that raises them and subclass this one.
"""

from clipcbm.core.errors import ClipCbmError, ConfigError


class PipelineError(ClipCbmError):
    """Stage one cannot do what was asked (bad dataset, model, concept list or option)."""


class PipelineConfigError(PipelineError, ConfigError):
    """A stage-one option value that is not allowed (raised while the config is built)."""


class OutputExistsError(PipelineError, FileExistsError):
    """An output file exists already (pass --overwrite or choose another --out)."""
