"""The dashboard's widgets: each draws a slice of a :class:`~moreh_tools.dashboard.data.Snapshot` and queries nothing."""
