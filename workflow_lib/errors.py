"""Named errors whose messages say which dataset, which file, and what to do."""


class WorkflowLibError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(WorkflowLibError):
    """The configuration is wrong; raised before any job runs."""


class InputRasterError(WorkflowLibError):
    """An input raster cannot be used as it is."""

    def __init__(self, dataset: str, path: str, problem: str):
        self.dataset = dataset
        self.path = path
        self.problem = problem
        super().__init__(f"dataset '{dataset}' ({path}): {problem}")
