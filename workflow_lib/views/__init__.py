"""What people look at: the status report (``onegrid status``)."""
