"""The profiler: events (what happened) -> step records (resolved times) ->
analysis (pure functions: peak, average, per layer) -> renderers."""
