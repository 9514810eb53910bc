"""The multi-object tracker: boxes, Kalman filter, association, the tracker, MOTChallenge files and metrics."""
