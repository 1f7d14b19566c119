"""Default settings of an analysis, shared by the options, the command line and the modules
that use them (importing this loads nothing)."""

DEFAULT_SMOOTHING = 0.9  # EMA weight of the smoothed train loss
NEAR_COPY_DISTANCE = 0.3  # metrics.copy_distances under which a sample is a near-copy (correlation above 0.955)
FEATURE_SPACES = ("auto", "probe", "clip", "none")
