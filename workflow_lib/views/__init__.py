"""What people look at: the status report (``python -m workflow_lib status``)."""
