"""What people drive: start, pause, freeze, resume and stop the run of this folder
(``onegrid run|pause|resume|stop|logs``)."""

from workflow_lib.controller.control import ControlError, logs, pause, resume, start, stop
from workflow_lib.controller.runfile import CONSOLE_LOG, RUN_FILE, RunInfo, read_run

__all__ = ["CONSOLE_LOG", "RUN_FILE", "ControlError", "RunInfo", "logs", "pause", "read_run", "resume", "start",
           "stop"]
